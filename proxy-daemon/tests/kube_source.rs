//! The kube source against the fake API server, through a real kubeconfig
//! and the real kube client and watcher: the initial-list gate, watch
//! updates, selectors, 410 Gone relists, dropped connections, and the API
//! server going away.
#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use proxy_core::health::ProxyHealth;
use proxy_core::testing::{RecordingDataplane, ServiceBuilder, SliceBuilder, endpoint, node};
use proxy_core::{
    ChangeTracker, PlannerConfig, Proxier, ProxyEvent, ServiceName, SyncRunner, SyncRunnerConfig, SyncTrigger,
    TrackerConfig,
};
use proxy_daemon::fake_apiserver::{FakeApiServer, Kind};
use proxy_daemon::source::EventSink;
use proxy_daemon::source::kube::{KubeSource, client_config};
use tokio::sync::watch;

struct Harness {
    api: FakeApiServer,
    proxier: Arc<Proxier>,
    dp: Arc<RecordingDataplane>,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(api: FakeApiServer) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
        let config = client_config(Some(&kubeconfig), None).await.unwrap();
        let source =
            KubeSource::new(config, "node-a", None, &proxy_daemon::config::ClientSettings { qps: -1.0, burst: 0 })
                .unwrap()
                .with_backoff(Duration::from_millis(50), Duration::from_millis(200));
        let dp = Arc::new(RecordingDataplane::new());
        let tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig::new("node-a")));
        let trigger = SyncTrigger::default();
        let proxier = Arc::new(Proxier::new(
            tracker,
            dp.clone(),
            ProxyHealth::new(Duration::from_secs(60)),
            None,
            trigger.clone(),
        ));
        let runner = SyncRunner::with_trigger(
            SyncRunnerConfig {
                min_sync_period: Duration::from_millis(10),
                sync_period: Duration::from_secs(3600),
                ..SyncRunnerConfig::default()
            },
            trigger,
        );
        let (stop, rx) = watch::channel(false);
        let sink: EventSink = {
            let p = proxier.clone();
            Arc::new(move |ev: ProxyEvent| {
                p.handle(ev);
            })
        };
        let mut r1 = rx.clone();
        tokio::spawn(source.run(sink, async move {
            let _ = r1.wait_for(|s| *s).await;
        }));
        let mut r2 = rx;
        tokio::spawn(proxier.clone().run(runner, async move {
            let _ = r2.wait_for(|s| *s).await;
        }));
        Harness { api, proxier, dp, stop, _dir: dir }
    }

    /// Services in the last successful sync.
    fn synced_services(&self) -> Vec<String> {
        self.dp.last_ok().map(|r| r.snapshot.services().map(|p| p.name().to_string()).collect()).unwrap_or_default()
    }

    fn endpoints_of(&self, ns: &str, name: &str) -> Vec<String> {
        let Some(req) = self.dp.last_ok() else { return Vec::new() };
        let Some(plan) = req.snapshot.service(&ServiceName::new(ns, name)) else { return Vec::new() };
        plan.ports.iter().flat_map(|p| p.internal().endpoints().iter().map(|e| e.addr().to_string())).collect()
    }

    async fn converged_with(&self, what: &str, want: &[&str]) {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        eventually(what, || {
            let ok = self.proxier.converged() && self.synced_services() == want;
            async move { ok }
        })
        .await;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn web() -> k8s_openapi::api::core::v1::Service {
    ServiceBuilder::new("default", "web", "10.96.0.10").port("http", 80, "TCP").build()
}

fn web_slice(ip: &str) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    SliceBuilder::new("default", "web-1", "web").port("http", 8080, "TCP").endpoint(endpoint(ip).node("node-a")).build()
}

fn with_kind<T: serde::Serialize>(obj: &T, api_version: &str, kind: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).unwrap();
    v["apiVersion"] = api_version.into();
    v["kind"] = kind.into();
    v
}

fn svc_json(s: &k8s_openapi::api::core::v1::Service) -> serde_json::Value {
    with_kind(s, "v1", "Service")
}

fn slice_json(s: &k8s_openapi::api::discovery::v1::EndpointSlice) -> serde_json::Value {
    with_kind(s, "discovery.k8s.io/v1", "EndpointSlice")
}

fn node_json(n: &k8s_openapi::api::core::v1::Node) -> serde_json::Value {
    with_kind(n, "v1", "Node")
}

#[tokio::test]
async fn initial_list_gates_programming_then_watch_updates_flow() {
    let api = FakeApiServer::start().await.unwrap();
    api.apply(&svc_json(&web()));
    api.apply(&slice_json(&web_slice("10.0.1.1")));
    // Many Services: the list is paged (kube asks for 500 at a time).
    for i in 0..600 {
        api.apply(&svc_json(
            &ServiceBuilder::new("bulk", &format!("s{i:03}"), "10.96.1.1").port("p", 80, "TCP").build(),
        ));
    }
    api.apply(&node_json(&node("node-a", "192.168.50.1", Some("zone-a"))));
    let h = Harness::start(api).await;
    eventually("first sync after every initial list", || {
        let n = h.synced_services().len();
        async move { n == 601 }
    })
    .await;
    let first = &h.dp.requests()[0];
    assert!(first.full, "the first sync is full");
    assert_eq!(first.snapshot.len(), 601, "nothing is programmed before every initial list is complete");
    assert_eq!(h.endpoints_of("default", "web"), vec!["10.0.1.1:8080"]);
    assert!(h.api.lists(Kind::Service) >= 2, "paged list");

    // Watch updates.
    h.api.apply(&slice_json(&web_slice("10.0.1.2")));
    eventually("endpoint update", || {
        let e = h.endpoints_of("default", "web");
        async move { e == vec!["10.0.1.2:8080"] }
    })
    .await;
    assert!(h.api.delete(Kind::Service, Some("default"), "web"));
    eventually("service deletion", || {
        let s = h.synced_services();
        async move { !s.contains(&"default/web".to_string()) }
    })
    .await;
}

#[tokio::test]
async fn kube_proxy_label_selectors() {
    let api = FakeApiServer::start().await.unwrap();
    api.apply(&node_json(&node("node-a", "192.168.50.1", None)));
    api.apply(&svc_json(&web()));
    api.apply(&svc_json(
        &ServiceBuilder::new("default", "other-proxy", "10.96.0.11")
            .port("p", 80, "TCP")
            .label("service.kubernetes.io/service-proxy-name", "someone-else")
            .build(),
    ));
    let h = Harness::start(api).await;
    h.converged_with("only unlabelled Services", &["default/web"]).await;
    // A label added later: the API server reports it as deleted from the watch.
    h.api.apply(&svc_json(
        &ServiceBuilder::new("default", "web", "10.96.0.10")
            .port("http", 80, "TCP")
            .label("service.kubernetes.io/headless", "")
            .build(),
    ));
    h.converged_with("labelled away", &[]).await;
}

#[tokio::test]
async fn watch_expiry_relists_and_deletes_what_vanished() {
    let api = FakeApiServer::start().await.unwrap();
    api.apply(&node_json(&node("node-a", "192.168.50.1", None)));
    api.apply(&svc_json(&web()));
    api.apply(&svc_json(&ServiceBuilder::new("default", "db", "10.96.0.12").port("p", 5432, "TCP").build()));
    let mut h = Harness::start(api).await;
    h.converged_with("initial", &["default/db", "default/web"]).await;
    let lists_before = h.api.lists(Kind::Service);

    // While the proxy is cut off, db is deleted and history is compacted:
    // the re-watch gets 410 Gone, the relist no longer has db.
    h.api.stop().await;
    h.api.delete(Kind::Service, Some("default"), "db");
    h.api.compact();
    h.api.restart().await.unwrap();
    h.converged_with("db deleted by the relist", &["default/web"]).await;
    assert!(h.api.lists(Kind::Service) > lists_before, "a relist happened");
}

#[tokio::test]
async fn dropped_connections_rewatch_without_relisting() {
    let api = FakeApiServer::start_with_bookmarks(Duration::from_millis(50)).await.unwrap();
    api.apply(&node_json(&node("node-a", "192.168.50.1", None)));
    api.apply(&svc_json(&web()));
    let h = Harness::start(api).await;
    h.converged_with("initial", &["default/web"]).await;
    let lists = h.api.lists(Kind::Service);
    let watches = h.api.watches(Kind::Service);
    // Let a few bookmarks pass, then cut every watch connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.api.drop_watches();
    eventually("re-watch", || {
        let w = h.api.watches(Kind::Service);
        async move { w > watches }
    })
    .await;
    h.api.apply(&svc_json(&ServiceBuilder::new("default", "late", "10.96.0.13").port("p", 80, "TCP").build()));
    h.converged_with("update after the reconnect", &["default/late", "default/web"]).await;
    assert_eq!(h.api.lists(Kind::Service), lists, "resumed from the last resourceVersion, no relist");
}

#[tokio::test]
async fn api_server_down_keeps_programmed_state() {
    let api = FakeApiServer::start().await.unwrap();
    api.apply(&node_json(&node("node-a", "192.168.50.1", None)));
    api.apply(&svc_json(&web()));
    api.apply(&slice_json(&web_slice("10.0.1.1")));
    let mut h = Harness::start(api).await;
    h.converged_with("initial", &["default/web"]).await;
    let syncs_before = h.dp.requests().len();

    h.api.stop().await;
    // Several backoff rounds pass with the API server away.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.synced_services(), vec!["default/web"], "state kept");
    assert_eq!(h.endpoints_of("default", "web"), vec!["10.0.1.1:8080"]);
    assert_eq!(h.dp.requests().len(), syncs_before, "nothing was re-programmed");

    h.api.restart().await.unwrap();
    h.api.apply(&slice_json(&web_slice("10.0.1.9")));
    eventually("updates flow again after the API server returns", || {
        let e = h.endpoints_of("default", "web");
        async move { e == vec!["10.0.1.9:8080"] }
    })
    .await;
}

#[tokio::test]
async fn node_deletion_makes_healthz_fail() {
    let api = FakeApiServer::start().await.unwrap();
    api.apply(&node_json(&node("node-a", "192.168.50.1", None)));
    let h = Harness::start(api).await;
    eventually("ready", || {
        let r = h.proxier.health().ready();
        async move { r }
    })
    .await;
    let mut n = node_json(&node("node-a", "192.168.50.1", None));
    n["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z".into();
    h.api.apply(&n);
    eventually("node deleting: unhealthy", || {
        let st = h.proxier.health().status(std::time::Instant::now());
        async move { !st.healthy && st.node_deleting }
    })
    .await;
}
