//! The bounded-frequency runner and the proxier, under paused tokio time.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxy_core::health::ProxyHealth;
use proxy_core::metrics::ProxyMetrics;
use proxy_core::testing::{RecordingDataplane, ServiceBuilder, SliceBuilder, endpoint, initial_list, node};
use proxy_core::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

fn cfg() -> SyncRunnerConfig {
    SyncRunnerConfig {
        min_sync_period: Duration::from_secs(1),
        sync_period: Duration::from_secs(30),
        retry_initial: Duration::from_secs(2),
        retry_max: Duration::from_secs(8),
    }
}

/// Attempts (time since start, full) recorded by a scripted sync function.
type Log = Arc<Mutex<Vec<(Duration, bool)>>>;

/// Starts a runner whose sync returns the scripted results in order (then Synced).
fn start(script: Vec<SyncResult>) -> (SyncTrigger, Log, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let runner = SyncRunner::new(cfg());
    let trigger = runner.trigger();
    let log: Log = Arc::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let t0 = Instant::now();
    let log2 = log.clone();
    let script = Arc::new(Mutex::new(script.into_iter()));
    let handle = tokio::spawn(async move {
        runner
            .run(
                move |full| {
                    log2.lock().unwrap().push((t0.elapsed(), full));
                    let next = script.lock().unwrap().next().unwrap_or(SyncResult::Synced { full });
                    let next = match next {
                        SyncResult::Synced { .. } => SyncResult::Synced { full },
                        other => other,
                    };
                    async move { next }
                },
                async move {
                    let _ = stopped.await;
                },
            )
            .await;
    });
    (trigger, log, stop, handle)
}

async fn settle() {
    // Let spawned tasks run; time is paused so this does not advance the clock.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn secs(log: &Log) -> Vec<(u64, bool)> {
    log.lock().unwrap().iter().map(|(d, f)| (d.as_millis() as u64 / 100, *f)).collect()
}

#[tokio::test(start_paused = true)]
async fn first_sync_is_immediate_and_full_then_bounded_by_min_period() {
    let (trigger, log, stop, handle) = start(vec![]);
    settle().await;
    assert_eq!(secs(&log), vec![(0, true)]);
    // A burst of requests right after: one sync, one min-period later, partial.
    for _ in 0..5 {
        trigger.request();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(log.lock().unwrap().len(), 1, "not before min-sync-period");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(secs(&log), vec![(0, true), (10, false)], "tenths of a second");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(log.lock().unwrap().len(), 2, "the burst coalesced into one sync");
    stop.send(()).unwrap();
    handle.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn periodic_full_resync_every_sync_period() {
    let (_trigger, log, stop, handle) = start(vec![]);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(secs(&log), vec![(0, true), (300, true), (600, true)]);
    stop.send(()).unwrap();
    handle.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn skipped_first_syncs_are_retried_every_sync_period_without_a_request() {
    // Initial lists incomplete twice, and no request ever comes: the runner
    // still tries once per sync period, not in a tight loop, not never.
    let (_trigger, log, stop, handle) = start(vec![SyncResult::Skipped, SyncResult::Skipped]);
    tokio::time::sleep(Duration::from_secs(91)).await;
    assert_eq!(secs(&log), vec![(0, true), (300, true), (600, true), (900, true)]);
    stop.send(()).unwrap();
    handle.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failures_retry_with_exponential_backoff_and_full_syncs() {
    let (_trigger, log, stop, handle) = start(vec![
        SyncResult::Synced { full: true },
        SyncResult::Failed,
        SyncResult::Failed,
        SyncResult::Failed,
        SyncResult::Failed,
    ]);
    settle().await;
    // Make the second attempt happen (a periodic sync at 30 s) and fail.
    tokio::time::sleep(Duration::from_secs(30) + Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_secs(2 + 4 + 8 + 8) + Duration::from_millis(10)).await;
    let got = secs(&log);
    assert_eq!(got, vec![(0, true), (300, true), (320, true), (360, true), (440, true), (520, true)]);
    stop.send(()).unwrap();
    handle.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_request_after_a_failure_syncs_early_and_full() {
    let (trigger, log, stop, handle) = start(vec![SyncResult::Failed]);
    settle().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    trigger.request();
    settle().await;
    assert_eq!(secs(&log), vec![(0, true), (12, true)]);
    stop.send(()).unwrap();
    handle.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_loop() {
    let (_trigger, _log, stop, handle) = start(vec![]);
    settle().await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), handle).await.expect("stops promptly").unwrap();
}

fn proxier(dp: Arc<RecordingDataplane>) -> (Arc<Proxier>, SyncRunner, prometheus_client::registry::Registry) {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ProxyMetrics::register(&mut registry);
    let runner = SyncRunner::new(cfg());
    let tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig::new("node-1")));
    let p = Proxier::new(tracker, dp, ProxyHealth::new(Duration::from_secs(60)), Some(metrics), runner.trigger());
    (Arc::new(p), runner, registry)
}

fn metrics_text(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

/// The syncs asked for by the initial lists' objects are skipped while a
/// list is incomplete; the InitDone that completes the last list changes
/// nothing by itself, yet must start the first sync (found in the VM, where
/// the runner is slow enough to run between the last object and InitDone).
#[tokio::test(start_paused = true)]
async fn the_last_init_done_starts_the_first_sync_even_when_it_changes_nothing() {
    let dp = Arc::new(RecordingDataplane::new());
    let (p, runner, _registry) = proxier(dp.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(p.clone().run(runner, async move {
        let _ = stopped.await;
    }));
    let svc = ServiceBuilder::new("ns", "web", "10.96.0.10").port("http", 80, "TCP").build();
    let slice =
        SliceBuilder::new("ns", "web-1", "web").port("http", 8080, "TCP").endpoint(endpoint("10.0.0.1")).build();
    let mut events = initial_list(vec![svc], vec![slice], Some(node("node-1", "192.168.0.1", None)));
    let last = events.pop().unwrap();
    assert!(matches!(last, ProxyEvent::Node(ResourceEvent::InitDone)));
    for ev in events {
        p.handle(ev);
    }
    // The runner wakes, finds the lists incomplete and skips.
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert!(dp.requests().is_empty());
    let report = p.handle(last);
    assert!(!report.changed && report.became_synced);
    let mut synced = p.subscribe();
    tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| s.syncs >= 1))
        .await
        .expect("the first sync follows the last InitDone within min-sync-period, not the 30 s resync")
        .unwrap();
    assert_eq!(dp.requests().len(), 1);
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn proxier_waits_for_initial_lists_then_programs_and_retries_failures() {
    let dp = Arc::new(RecordingDataplane::new());
    let (p, runner, registry) = proxier(dp.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(p.clone().run(runner, async move {
        let _ = stopped.await;
    }));
    settle().await;
    assert!(dp.requests().is_empty(), "nothing before the initial lists complete");

    let svc = ServiceBuilder::new("ns", "web", "10.96.0.10").port("http", 80, "TCP").build();
    let slice =
        SliceBuilder::new("ns", "web-1", "web").port("http", 8080, "TCP").endpoint(endpoint("10.0.0.1")).build();
    for ev in initial_list(vec![svc], vec![slice], Some(node("node-1", "192.168.0.1", None))) {
        p.handle(ev);
    }
    let mut synced = p.subscribe();
    tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| s.syncs >= 1)).await.unwrap().unwrap();
    let first = dp.requests().last().unwrap().clone();
    assert!(first.full);
    assert_eq!(first.snapshot.len(), 1);
    assert!(p.health().ready());

    // A change whose sync fails twice: retried, full, nothing lost.
    dp.fail_next(2);
    let slice2 =
        SliceBuilder::new("ns", "web-1", "web").port("http", 8080, "TCP").endpoint(endpoint("10.0.0.2")).build();
    p.handle(ProxyEvent::EndpointSlice(ResourceEvent::Apply(slice2)));
    tokio::time::timeout(Duration::from_secs(20), synced.wait_for(|s| s.syncs >= 2)).await.unwrap().unwrap();
    let reqs = dp.requests();
    assert_eq!(reqs.len(), 4, "one initial, two failures, one success");
    assert!(!reqs[1].full, "the first attempt is partial");
    assert!(reqs[2].full && reqs[3].full, "retries are full");
    assert_eq!(reqs[3].changed.iter().map(|n| n.to_string()).collect::<Vec<_>>(), vec!["ns/web"]);
    let ok = dp.last_ok().unwrap();
    let eps = ok.snapshot.port_plans().next().unwrap().internal().endpoints()[0].addr().to_string();
    assert_eq!(eps, "10.0.0.2:8080");

    let text = metrics_text(&registry);
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 2",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 2",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total 2",
        "kubeproxy_sync_proxy_rules_service_changes_total 1",
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0",
        "switchyard_sync_failures_total{backend=\"recording\"} 2",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}",
        // kubeproxy_network_programming_duration_seconds appears with its
        // first sample, as kube-proxy's (a labelled family): none here.
    ] {
        assert!(text.contains(name), "missing {name:?} in\n{text}");
    }
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn proxier_counts_invalid_objects_and_keeps_serving() {
    let dp = Arc::new(RecordingDataplane::new());
    let (p, _runner, registry) = proxier(dp.clone());
    let good = ServiceBuilder::new("ns", "good", "10.96.0.1").port("", 80, "TCP").build();
    let bad = ServiceBuilder::new("ns", "bad", "10.96.0.300").port("", 80, "TCP").build();
    for ev in initial_list(vec![good, bad], vec![], None) {
        p.handle(ev);
    }
    assert_eq!(p.sync_once(true).await, SyncResult::Synced { full: true });
    assert_eq!(dp.last_ok().unwrap().snapshot.len(), 1);
    assert!(metrics_text(&registry).contains("switchyard_invalid_objects_total{kind=\"Service\"} 1"));
}

#[tokio::test(start_paused = true)]
async fn health_turns_bad_when_a_change_waits_too_long() {
    let dp = Arc::new(RecordingDataplane::new());
    let (p, _runner, _registry) = proxier(dp.clone());
    for ev in initial_list(vec![], vec![], None) {
        p.handle(ev);
    }
    p.sync_once(true).await;
    dp.fail_next(100);
    p.handle(ProxyEvent::Service(ResourceEvent::Apply(
        ServiceBuilder::new("ns", "a", "10.96.0.1").port("", 80, "TCP").build(),
    )));
    assert_eq!(p.sync_once(false).await, SyncResult::Failed);
    let now = std::time::Instant::now();
    assert!(p.health().status(now).healthy);
    assert!(!p.health().status(now + Duration::from_secs(61)).healthy);
    dp.fail_next(0);
    assert_eq!(p.sync_once(true).await, SyncResult::Synced { full: true });
    assert!(p.health().status(now + Duration::from_secs(61)).healthy);
}
