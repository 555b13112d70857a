//! Core benchmarks: tracker ingest and planning at 1k/10k/50k Services × 10
//! endpoints, one endpoint change at 10k Services (the tracker alone, and the
//! whole proxier with metrics and health at 1k/10k/30k: the cost must not grow
//! with the number of Services), and the memory the tracker holds per Service.
//!
//! Run: `cargo bench -p proxy-core --bench core` (add `-- --quick` for a fast pass).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_core::testing::{ServiceBuilder, SliceBuilder, endpoint, initial_list, node};
use proxy_core::*;

/// Counts live heap bytes so the bench can report memory held per Service.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const ENDPOINTS: usize = 10;
const NODE: &str = "node-1";

fn ip(base: u32, i: usize) -> String {
    let v = base + i as u32;
    format!("{}.{}.{}.{}", v >> 24, (v >> 16) & 255, (v >> 8) & 255, v & 255)
}

fn service(i: usize) -> Service {
    ServiceBuilder::new("bench", &format!("svc-{i}"), &ip(0x0a60_0000, i)).port("http", 80, "TCP").build()
}

fn slice(i: usize, generation: usize) -> EndpointSlice {
    (0..ENDPOINTS)
        .fold(
            SliceBuilder::new("bench", &format!("svc-{i}-abc"), &format!("svc-{i}")).port("http", 8080, "TCP"),
            |s, e| {
                let node = if e % 2 == 0 { NODE } else { "node-2" };
                s.endpoint(endpoint(&ip(0x0a00_0000, i * 16 + e + generation)).node(node))
            },
        )
        .build()
}

fn events(n: usize) -> Vec<ProxyEvent> {
    initial_list(
        (0..n).map(service).collect(),
        (0..n).map(|i| slice(i, 0)).collect(),
        Some(node(NODE, "192.168.0.1", None)),
    )
}

fn tracker() -> ChangeTracker {
    ChangeTracker::new(TrackerConfig::new(PlannerConfig::new(NODE)))
}

fn loaded(n: usize) -> ChangeTracker {
    let mut t = tracker();
    for ev in events(n) {
        t.apply(ev);
    }
    let b = t.take_batch();
    t.commit(b);
    t
}

fn ingest_and_plan(c: &mut Criterion) {
    for n in [1_000, 10_000, 50_000] {
        let mut g = c.benchmark_group(format!("tracker/{n}_services"));
        if n >= 10_000 {
            g.sample_size(10);
        }
        g.bench_function("ingest", |b| {
            b.iter_batched(
                || events(n),
                |evs| {
                    let mut t = tracker();
                    for ev in evs {
                        t.apply(ev);
                    }
                    t
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function("plan", |b| {
            b.iter_batched(
                || {
                    let mut t = tracker();
                    for ev in events(n) {
                        t.apply(ev);
                    }
                    t
                },
                |mut t| black_box(t.take_batch()),
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
}

fn one_endpoint_change(c: &mut Criterion) {
    let mut t = loaded(10_000);
    let mut generation = 0;
    c.bench_function("tracker/10000_services/one_endpoint_change", |b| {
        b.iter_batched(
            || {
                generation = (generation + 1) % 5;
                ProxyEvent::EndpointSlice(ResourceEvent::Apply(slice(5_000, generation)))
            },
            |ev| {
                t.apply(ev);
                let batch = t.take_batch();
                assert_eq!(batch.changed.len(), 1);
                t.commit(batch);
            },
            BatchSize::SmallInput,
        )
    });
}

/// A dataplane that programs nothing and remembers nothing.
#[derive(Debug)]
struct NoopDataplane;

#[async_trait::async_trait]
impl Dataplane for NoopDataplane {
    fn mode(&self) -> &str {
        "noop"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }
    async fn sync(&self, request: SyncRequest) -> Result<SyncOutcome, DataplaneError> {
        Ok(SyncOutcome { full: request.full, ..Default::default() })
    }
    async fn inspect(&self) -> Result<ProgrammedState, DataplaneError> {
        Ok(ProgrammedState::default())
    }
    async fn cleanup(&self) -> Result<(), DataplaneError> {
        Ok(())
    }
}

/// One endpoint change through the whole proxier (tracker, batch, a no-op
/// sync, commit, health, metrics): the core's share of "event to kernel".
fn proxier_one_endpoint_change(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    for n in [1_000usize, 10_000, 30_000] {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = proxy_core::metrics::ProxyMetrics::register(&mut registry);
        let proxier = Proxier::new(
            tracker(),
            std::sync::Arc::new(NoopDataplane),
            proxy_core::health::ProxyHealth::new(Duration::from_secs(60)),
            Some(metrics),
            SyncTrigger::default(),
        );
        for ev in events(n) {
            proxier.handle(ev);
        }
        rt.block_on(proxier.sync_once(true));
        let mut generation = 0;
        c.bench_function(&format!("proxier/{n}_services/one_endpoint_change"), |b| {
            b.iter_batched(
                || {
                    generation = (generation + 1) % 5;
                    ProxyEvent::EndpointSlice(ResourceEvent::Apply(slice(n / 2, generation)))
                },
                |ev| {
                    proxier.handle(ev);
                    rt.block_on(proxier.sync_once(false))
                },
                BatchSize::SmallInput,
            )
        });
    }
}

/// Live bytes the tracker holds per Service in steady state: objects, plans
/// and the synced snapshot, after the initial list was programmed.
fn memory_per_service() {
    for n in [1_000usize, 10_000, 50_000] {
        // Measured from before the events exist: ingest consumes (frees) them.
        let before = LIVE.load(Ordering::Relaxed);
        let evs = events(n);
        let mut t = tracker();
        for ev in evs {
            t.apply(ev);
        }
        let batch = t.take_batch();
        t.commit(batch);
        let snapshot = t.snapshot();
        let held = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "memory/{n}_services: {:.2} KiB per Service ({} endpoints each), {:.1} MiB total",
            held as f64 / n as f64 / 1024.0,
            ENDPOINTS,
            held as f64 / (1024.0 * 1024.0)
        );
        drop((snapshot, t));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = ingest_and_plan, one_endpoint_change, proxier_one_endpoint_change
}

fn main() {
    memory_per_service();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
