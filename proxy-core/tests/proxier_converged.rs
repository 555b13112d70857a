//! `Proxier::converged` is a sync barrier: true only when every accepted change is programmed.

use std::sync::Arc;
use std::time::Duration;

use proxy_core::health::ProxyHealth;
use proxy_core::testing::{RecordingDataplane, ServiceBuilder, initial_list};
use proxy_core::{ChangeTracker, PlannerConfig, Proxier, ProxyEvent, ResourceEvent, SyncTrigger, TrackerConfig};

#[tokio::test]
async fn converged_tracks_pending_and_failed_syncs() {
    let dp = Arc::new(RecordingDataplane::new());
    let tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig::new("node-a")));
    let proxier =
        Proxier::new(tracker, dp.clone(), ProxyHealth::new(Duration::from_secs(60)), None, SyncTrigger::default());
    assert!(!proxier.converged(), "initial lists incomplete");
    for ev in initial_list(vec![], vec![], None) {
        proxier.handle(ev);
    }
    assert!(proxier.converged(), "nothing to program");
    let svc = ServiceBuilder::new("default", "web", "10.96.0.10").port("http", 80, "TCP").build();
    proxier.handle(ProxyEvent::Service(ResourceEvent::Apply(svc)));
    assert!(!proxier.converged(), "a change is pending");
    dp.fail_next(1);
    proxier.sync_once(false).await;
    assert!(!proxier.converged(), "a failed sync leaves the change pending");
    proxier.sync_once(false).await;
    assert!(proxier.converged());
}

/// A failed full sync makes the proxy unhealthy until a sync succeeds; a
/// failed partial one does not (it is retried in full first).
#[tokio::test]
async fn a_failed_full_sync_is_unhealthy_until_one_succeeds() {
    let dp = Arc::new(RecordingDataplane::new());
    let health = ProxyHealth::new(Duration::from_secs(60));
    let tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig::new("node-a")));
    let proxier = Proxier::new(tracker, dp.clone(), health.clone(), None, SyncTrigger::default());
    for ev in initial_list(vec![], vec![], None) {
        proxier.handle(ev);
    }
    proxier.sync_once(true).await;
    let svc = ServiceBuilder::new("default", "web", "10.96.0.10").port("http", 80, "TCP").build();
    proxier.handle(ProxyEvent::Service(ResourceEvent::Apply(svc)));
    dp.fail_next(2);
    proxier.sync_once(false).await;
    assert!(health.status(std::time::Instant::now()).healthy, "one failed partial sync");
    proxier.sync_once(true).await;
    let st = health.status(std::time::Instant::now());
    assert!(!st.healthy, "the full retry failed too: the dataplane is known broken");
    assert!(st.sync_failing.as_deref().is_some_and(|e| e.contains("injected failure")), "{st:?}");
    proxier.sync_once(true).await;
    assert!(health.status(std::time::Instant::now()).healthy);
}

/// Drift a backend repaired is counted per backend and kind.
#[tokio::test]
async fn repaired_drift_is_counted() {
    let dp = Arc::new(RecordingDataplane::new());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = proxy_core::metrics::ProxyMetrics::register(&mut registry);
    let tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig::new("node-a")));
    let proxier = Proxier::new(
        tracker,
        dp.clone(),
        ProxyHealth::new(Duration::from_secs(60)),
        Some(metrics),
        SyncTrigger::default(),
    );
    for ev in initial_list(vec![], vec![], None) {
        proxier.handle(ev);
    }
    dp.repair_next("chain", 2);
    proxier.sync_once(true).await;
    dp.repair_next("chain", 1);
    dp.repair_next("hook jump", 1);
    proxier.sync_once(true).await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains(r#"switchyard_drift_repairs_total{backend="recording",kind="chain"} 3"#), "{text}");
    assert!(text.contains(r#"switchyard_drift_repairs_total{backend="recording",kind="hook jump"} 1"#), "{text}");
}

fn gauge(registry: &prometheus_client::registry::Registry, policy: &str) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    let prefix = format!(
        r#"kubeproxy_sync_proxy_rules_no_local_endpoints_total{{traffic_policy="{policy}",ip_family="IPv4"}} "#
    );
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("absent in:\n{text}"))
}

/// The no-local-endpoints gauge follows changes, kept per Service (only
/// the Services a sync changed are recounted).
#[tokio::test]
async fn no_local_endpoints_follows_changes() {
    use proxy_core::testing::{SliceBuilder, endpoint, node};
    let dp = Arc::new(RecordingDataplane::new());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = proxy_core::metrics::ProxyMetrics::register(&mut registry);
    let tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig::new("node-a")));
    let proxier =
        Proxier::new(tracker, dp, ProxyHealth::new(Duration::from_secs(60)), Some(metrics), SyncTrigger::default());
    let local = |name: &str, ip: &str| {
        ServiceBuilder::new("default", name, ip)
            .type_("NodePort")
            .node_port("http", 80, "TCP", 0)
            .external_traffic_policy("Local")
            .build()
    };
    let slice = |svc: &str, node: &str| {
        SliceBuilder::new("default", &format!("{svc}-1"), svc)
            .port("http", 8080, "TCP")
            .endpoint(endpoint("10.0.2.1").node(node))
            .build()
    };
    let events = initial_list(
        vec![local("a", "10.96.0.1"), local("b", "10.96.0.2")],
        vec![slice("a", "node-b"), slice("b", "node-b")],
        Some(node("node-a", "192.168.0.1", None)),
    );
    for ev in events {
        proxier.handle(ev);
    }
    proxier.sync_once(true).await;
    assert_eq!(gauge(&registry, "external"), "2", "both Services have endpoints, none on node-a");
    proxier.handle(ProxyEvent::EndpointSlice(ResourceEvent::Apply(slice("a", "node-a"))));
    proxier.sync_once(false).await;
    assert_eq!(gauge(&registry, "external"), "1", "a has a local endpoint now");
    proxier.handle(ProxyEvent::Service(ResourceEvent::Delete(local("b", "10.96.0.2"))));
    proxier.sync_once(false).await;
    assert_eq!(gauge(&registry, "external"), "0", "b is gone");
    assert_eq!(gauge(&registry, "internal"), "0");
}

fn metric(registry: &prometheus_client::registry::Registry, name: &str) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_string)).unwrap_or_default()
}

/// Source events refresh the gauges at most every 100 ms, so the last events
/// of a burst may leave them behind; the sync they ask for catches them up,
/// also when it finds nothing to program (a Service created and deleted
/// before the sync). Found against a real kube-apiserver: `switchyard_services`
/// kept counting a deleted Service until the next periodic sync.
#[tokio::test]
async fn gauges_catch_up_when_changes_cancel_out_before_the_sync() {
    let dp = Arc::new(RecordingDataplane::new());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = proxy_core::metrics::ProxyMetrics::register(&mut registry);
    // The initial lists are in, straight into the tracker, so the proxier's
    // first event (always refreshing the gauges) is the creation; the
    // deletion right after falls inside the 100 ms window.
    let mut tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig::new("node-a")));
    for ev in initial_list(vec![], vec![], None) {
        tracker.apply(ev);
    }
    let proxier =
        Proxier::new(tracker, dp, ProxyHealth::new(Duration::from_secs(60)), Some(metrics), SyncTrigger::default());
    let svc = ServiceBuilder::new("default", "late", "10.96.0.11").port("http", 80, "TCP").build();
    proxier.handle(ProxyEvent::Service(ResourceEvent::Apply(svc.clone())));
    assert_eq!(metric(&registry, "switchyard_services"), "1");
    proxier.handle(ProxyEvent::Service(ResourceEvent::Delete(svc)));
    // The runner's sync for those events: nothing to program.
    proxier.sync_once(false).await;
    assert_eq!(metric(&registry, "switchyard_services"), "0");
    assert_eq!(metric(&registry, "kubeproxy_sync_proxy_rules_service_changes_pending"), "0");
}
