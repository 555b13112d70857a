//! The file source at cluster size (issue 18, finding 2).
//!
//! - `one_slice_change_10k`: 10,000 Services (and their EndpointSlices) in
//!   100 files of 100; one EndpointSlice changes in one file (written to a
//!   temporary file and renamed over, as kubectl and ConfigMap mounts do).
//!   Measured from just before the write to the sync that programs it (a
//!   recording dataplane, so this is the source and the core, not a kernel).
//! - `load_100k_objects_one_file`: one file of 50,000 Services and 50,000
//!   EndpointSlices read as the daemon's first load reads it.
//!
//! Run: `cargo bench -p proxy-daemon --bench file_source` (release).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use proxy_core::health::ProxyHealth;
use proxy_core::testing::RecordingDataplane;
use proxy_core::{
    ChangeTracker, PlannerConfig, Proxier, ProxyEvent, SyncRunner, SyncRunnerConfig, SyncTrigger, TrackerConfig,
};
use proxy_daemon::source::EventSink;
use proxy_daemon::source::file::FileSource;

const FILES: usize = 100;
const PER_FILE: usize = 100;

fn ip(base: u32, i: usize) -> String {
    let v = base + i as u32;
    format!("{}.{}.{}.{}", v >> 24, (v >> 16) & 255, (v >> 8) & 255, v & 255)
}

/// Service `i` and its slice; `generation` moves the slice's first endpoint.
fn objects(i: usize, generation: usize) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec:\n  clusterIP: {cip}\n  ports: [{{name: http, port: 80, protocol: TCP}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-abc\n  namespace: bench\n  labels: {{kubernetes.io/service-name: svc-{i}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n\
         - addresses: [{a}]\n  conditions: {{ready: true}}\n  nodeName: node-b\n\
         - addresses: [{b}]\n  conditions: {{ready: true}}\n  nodeName: node-b\n",
        cip = ip(0x0a60_0000, i),
        a = ip(0x0af0_0000, i * 2 + generation * 65_536),
        b = ip(0x0af0_0000, i * 2 + 1),
    )
}

fn file_text(file: usize, changed: Option<(usize, usize)>) -> String {
    (0..PER_FILE)
        .map(|j| {
            let i = file * PER_FILE + j;
            let generation = changed.filter(|(c, _)| *c == i).map_or(0, |(_, g)| g);
            objects(i, generation)
        })
        .collect()
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus:\n  addresses: [{type: InternalIP, address: 192.168.0.10}]\n";

fn one_slice_change_10k(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    for f in 0..FILES {
        std::fs::write(dir.path().join(format!("f{f:03}.yaml")), file_text(f, None)).expect("write");
    }
    std::fs::write(dir.path().join("node.yaml"), NODE).expect("write");

    let tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig::new("node-a")));
    let trigger = SyncTrigger::default();
    let runner_cfg = SyncRunnerConfig {
        min_sync_period: Duration::from_millis(1),
        sync_period: Duration::from_secs(3600),
        ..SyncRunnerConfig::default()
    };
    let proxier = Arc::new(Proxier::new(
        tracker,
        Arc::new(RecordingDataplane::new()),
        ProxyHealth::new(Duration::from_secs(60)),
        None,
        trigger.clone(),
    ));
    let sink: EventSink = {
        let p = proxier.clone();
        Arc::new(move |ev: ProxyEvent| {
            p.handle(ev);
        })
    };
    // The daemon's default poll interval.
    let source = Arc::new(FileSource::new(dir.path().to_path_buf(), Duration::from_millis(250), sink));
    let (_reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = SyncRunner::with_trigger(runner_cfg, trigger);
    let mut synced = proxier.subscribe();
    rt.block_on(async {
        tokio::spawn(source.run(reload_rx, async move {
            let _ = stop_rx.await;
        }));
        let (p, _) = (proxier.clone(), ());
        tokio::spawn(async move { p.run(runner, std::future::pending()).await });
        tokio::time::timeout(Duration::from_secs(600), synced.wait_for(|s| s.syncs > 0 && s.generation > 0))
            .await
            .expect("first sync in time")
            .expect("proxier running");
    });
    let services = proxier.desired().len();
    assert_eq!(services, FILES * PER_FILE, "every Service loaded");

    let mut n = 0usize;
    let mut group = c.benchmark_group("file_source");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("one_slice_change_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let file = n % FILES;
                let service = file * PER_FILE + (n / FILES) % PER_FILE;
                let text = file_text(file, Some((service, n)));
                let before = proxier.synced_generation();
                let start = Instant::now();
                write_atomically(&dir.path().join(format!("f{file:03}.yaml")), &text);
                rt.block_on(async {
                    let mut w = proxier.subscribe();
                    tokio::time::timeout(Duration::from_secs(120), w.wait_for(|s| s.generation > before))
                        .await
                        .expect("programmed in time")
                        .expect("proxier running");
                });
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();
    let _ = stop_tx.send(());
}

fn load_100k_objects_one_file(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("all.yaml");
    let text: String = (0..50_000).map(|i| objects(i, 0)).collect();
    std::fs::write(&path, text).expect("write");
    let mut group = c.benchmark_group("file_source");
    group.sample_size(10).measurement_time(Duration::from_secs(30));
    group.bench_function("load_100k_objects_one_file", |b| {
        b.iter(|| {
            let (m, errors) = proxy_daemon::source::file::read_once(&path);
            assert!(errors.is_empty(), "{:?}", errors.first());
            assert_eq!(m.services.len() + m.slices.len(), 100_000);
            black_box(m)
        });
    });
    group.finish();
}

criterion_group!(benches, one_slice_change_10k, load_100k_objects_one_file);
criterion_main!(benches);
