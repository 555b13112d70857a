//! The daemon side of the protocol against FakePlugin (`fake_plugin.py`):
//! handshake, full then incremental batches, typed errors, protocol
//! violations, crashes and restarts, timeouts, a sidecar socket, and
//! coalescing in front of a slow plugin. No root needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backend_plugin::{PluginDataplane, PluginMetrics};
use proxy_core::testing::{SliceBuilder, endpoint};
use proxy_core::{
    BackendContext, Capability, Dataplane, DataplaneError, DataplaneHealth, NetNamespace, ProxyEvent, ResourceEvent,
    ServiceName, SyncRequest,
};
use serde_json::{Value, json};

fn fake() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_plugin.py").to_string()
}

use testkit::{eventually_sync as eventually, patience};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture { dir: tempfile::tempdir().expect("temp dir") }
    }

    fn record(&self) -> PathBuf {
        self.dir.path().join("record.jsonl")
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.record())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn batches(&self) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == "batch").collect()
    }

    fn pids(&self) -> Vec<i64> {
        self.events().iter().filter(|e| e["event"] == "start").filter_map(|e| e["pid"].as_i64()).collect()
    }

    fn section(&self, extra: &[&str]) -> Value {
        let mut command = vec!["python3".to_string(), fake(), "--record".into(), self.record().display().to_string()];
        command.extend(extra.iter().map(|s| s.to_string()));
        json!({"command": command, "restartBackoff": "50ms", "restartBackoffMax": "200ms", "options": {"x": 1}})
    }

    fn ctx(&self, section: Value) -> BackendContext {
        let mut ctx = backend_plugin::samples::context();
        ctx.netns = NetNamespace::current();
        ctx.section = section;
        ctx
    }
}

async fn build(ctx: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError> {
    backend_plugin::factory().build(ctx).await
}

fn full(snapshot: &Arc<proxy_core::Snapshot>) -> SyncRequest {
    SyncRequest { snapshot: snapshot.clone(), changed: Arc::new(BTreeSet::new()), full: true }
}

fn chain(e: &DataplaneError) -> String {
    proxy_core::ErrorChain(e).to_string()
}

/// Kills a plugin process the test's dataplane started, by its pid.
fn kill(pid: i64) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

#[tokio::test]
async fn handshake_full_then_incremental_batches_and_inspect() {
    let f = Fixture::new();
    let dp = build(&f.ctx(f.section(&[]))).await.expect("plugin starts");
    assert!(dp.capabilities().has(Capability::NodePort));
    assert!(!dp.capabilities().has(Capability::Sctp));
    let hello = &f.events()[1];
    assert_eq!(hello["event"], "hello");
    assert_eq!(hello["options"], json!({"x": 1}));
    assert_eq!(hello["context"]["node_name"], "node-a");
    assert_eq!(hello["context"]["nodeport_cidrs"], json!(["172.18.0.11/32"]), "primary resolved to the node's IPs");

    let snap = backend_plugin::samples::snapshot();
    let outcome = dp.sync(full(&snap)).await.expect("full sync");
    assert!(outcome.full);
    assert_eq!(outcome.objects["services"], snap.len() as u64);
    assert_eq!(dp.inspect().await.expect("inspect"), snap.expected_state(), "the plugin got every plan");

    // Not full: only the changed Services are sent; one that is gone is deleted.
    let changed = BTreeSet::from([ServiceName::new("default", "web"), ServiceName::new("default", "gone")]);
    let outcome =
        dp.sync(SyncRequest { snapshot: snap.clone(), changed: Arc::new(changed), full: false }).await.expect("sync");
    assert!(!outcome.full);
    let batches = f.batches();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0]["full"], true);
    assert_eq!(batches[0]["services"].as_array().map(Vec::len), Some(snap.len()));
    assert_eq!(batches[1]["full"], false);
    assert_eq!(batches[1]["services"], json!(["default/gone", "default/web"]));

    dp.cleanup().await.expect("cleanup");
    assert!(dp.inspect().await.expect("inspect").frontends.is_empty());
    assert_eq!(dp.health(), DataplaneHealth::Up);
}

#[tokio::test]
async fn a_crashed_plugin_is_restarted_and_gets_the_full_state() {
    let f = Fixture::new();
    let metrics = PluginMetrics::new();
    let cfg = backend_plugin::PluginConfig::parse(&f.section(&[])).expect("valid").expect("configured");
    let dp = PluginDataplane::start(cfg, &f.ctx(Value::Null), metrics.clone()).await.expect("starts");
    let snap = backend_plugin::samples::snapshot();
    dp.sync(full(&snap)).await.expect("sync");
    assert_eq!(metrics.up.get(), 1);
    let first = f.pids()[0];

    kill(first);
    // Down until restarted: /healthz fails meanwhile (ProxyHealth consults health()).
    eventually("the plugin to be restarted", || (f.pids().len() == 2).then_some(())).await;
    // The restarted plugin gets the whole state without the core asking.
    let replayed = eventually("a full batch to the new process", || {
        let pid = f.pids()[1];
        f.batches().into_iter().find(|b| b["pid"] == pid && b["full"] == true)
    })
    .await;
    assert_eq!(replayed["services"].as_array().map(Vec::len), Some(snap.len()));
    eventually("the dataplane to be up", || (dp.health() == DataplaneHealth::Up).then_some(())).await;
    assert_eq!(metrics.up.get(), 1);
    assert_eq!(metrics.restarts.get(), 1);
    assert_eq!(dp.inspect().await.expect("inspect"), snap.expected_state());
}

#[tokio::test]
async fn health_is_down_while_the_plugin_cannot_be_restarted() {
    let f = Fixture::new();
    let script = f.dir.path().join("plugin.py");
    std::fs::copy(fake(), &script).expect("copy");
    let mut section = f.section(&[]);
    section["command"][1] = json!(script.display().to_string());
    section["requestTimeout"] = json!("300ms");
    let metrics = PluginMetrics::new();
    let cfg = backend_plugin::PluginConfig::parse(&section).expect("valid").expect("configured");
    let dp = PluginDataplane::start(cfg, &f.ctx(Value::Null), metrics.clone()).await.expect("starts");
    // The plugin's program disappears, then the plugin dies: restarts keep failing.
    std::fs::write(&script, "import sys; sys.exit(5)\n").expect("break the plugin");
    kill(f.pids()[0]);
    let reason = eventually("health to report the plugin down", || match dp.health() {
        DataplaneHealth::Down { reason } => Some(reason),
        DataplaneHealth::Up => None,
    })
    .await;
    assert!(reason.starts_with("plugin fake: "), "{reason}");
    assert_eq!(metrics.up.get(), 0);
    // A sync waits up to the request timeout for the plugin, then fails naming why.
    let err = dp.sync(full(&backend_plugin::samples::snapshot())).await.unwrap_err();
    assert!(chain(&err).contains("plugin fake is down: "), "{}", chain(&err));
    // Fixed: the next restart succeeds and health comes back.
    std::fs::copy(fake(), &script).expect("restore");
    eventually("the dataplane to come back", || (dp.health() == DataplaneHealth::Up).then_some(())).await;
    assert!(metrics.restarts.get() >= 1);
}

#[tokio::test]
async fn a_failed_barrier_is_a_typed_error_and_the_next_batch_is_full() {
    let f = Fixture::new();
    let dp = build(&f.ctx(f.section(&["--fail-barrier", "2"]))).await.expect("starts");
    let snap = backend_plugin::samples::snapshot();
    dp.sync(full(&snap)).await.expect("first sync");
    let changed = Arc::new(BTreeSet::from([ServiceName::new("default", "web")]));
    let err = dp.sync(SyncRequest { snapshot: snap.clone(), changed: changed.clone(), full: false }).await.unwrap_err();
    assert!(matches!(err, DataplaneError::Failed { .. }), "{err:?}");
    assert!(chain(&err).contains("barrier 3 failed: injected failure"), "{}", chain(&err));
    // The core retries with a partial request; the plugin still gets everything.
    dp.sync(SyncRequest { snapshot: snap.clone(), changed, full: false }).await.expect("retry");
    let batches = f.batches();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[2]["full"], true, "after an error the next batch is full");
    assert_eq!(dp.health(), DataplaneHealth::Up, "a typed error keeps the plugin");
    assert_eq!(f.pids().len(), 1);
}

#[tokio::test]
async fn protocol_violations_name_the_message_and_restart_the_plugin() {
    let cases = [
        ("notjson", "line 3: not JSON"),
        ("schema", "line 3 (message \"ack\"): missing required property \"id\""),
        ("unknown-id", "line 3 (message \"ack\"): answers id 999, which no request is waiting for"),
        ("wrong-answer", "barrier 2 is answered by ack or error"),
    ];
    for (how, expected) in cases {
        let f = Fixture::new();
        let metrics = PluginMetrics::new();
        let cfg = backend_plugin::PluginConfig::parse(&f.section(&["--violate", how])).expect("valid").expect("set");
        let dp = PluginDataplane::start(cfg, &f.ctx(Value::Null), metrics.clone()).await.expect("starts");
        let snap = backend_plugin::samples::snapshot();
        let err = dp.sync(full(&snap)).await.unwrap_err();
        let text = chain(&err);
        assert!(text.contains("violated the protocol") && text.contains(expected), "{how}: {text}");
        // The connection is closed, the plugin restarted and given the full state.
        eventually("a restart", || (f.pids().len() >= 2).then_some(())).await;
        assert!(metrics.protocol_errors.get() >= 1, "{how}");
        eventually("the replay", || {
            let pid = f.pids()[1];
            f.batches().into_iter().find(|b| b["pid"] == pid && b["full"] == true)
        })
        .await;
    }
}

#[tokio::test]
async fn handshake_problems_fail_the_build() {
    let f = Fixture::new();
    let err = build(&f.ctx(f.section(&["--unavailable", "nft is not installed"]))).await.unwrap_err();
    assert!(matches!(&err, DataplaneError::Unavailable { reason, .. } if reason == "nft is not installed"), "{err:?}");
    let err = build(&f.ctx(f.section(&["--version", "2"]))).await.unwrap_err();
    assert!(chain(&err).contains("speaks protocol version 2; this daemon speaks [1]"), "{}", chain(&err));
    let err = build(&f.ctx(json!({"command": ["/nonexistent/plugin"]}))).await.unwrap_err();
    assert!(chain(&err).contains("starting plugin `/nonexistent/plugin`"), "{}", chain(&err));
    let probe = backend_plugin::factory().probe(&f.ctx(json!({"command": ["/nonexistent/plugin"]}))).await;
    assert!(matches!(probe, Err(DataplaneError::Unavailable { .. })), "{probe:?}");
}

#[tokio::test]
async fn a_plugin_that_does_not_answer_in_time_is_restarted() {
    let f = Fixture::new();
    let mut section = f.section(&["--slow-ack", "30"]);
    section["requestTimeout"] = json!("300ms");
    let dp = build(&f.ctx(section)).await.expect("starts");
    let err = dp.sync(full(&backend_plugin::samples::snapshot())).await.unwrap_err();
    assert!(chain(&err).contains("did not answer barrier 2 within 300 ms"), "{}", chain(&err));
    eventually("a restart", || (f.pids().len() >= 2).then_some(())).await;
}

#[tokio::test]
async fn a_sidecar_on_a_socket_is_reconnected_after_it_restarts() {
    let f = Fixture::new();
    let sock = f.dir.path().join("plugin.sock");
    let start_sidecar = |f: &Fixture, sock: &Path| {
        tokio::process::Command::new("python3")
            .args([
                fake(),
                "--record".into(),
                f.record().display().to_string(),
                "--socket".into(),
                sock.display().to_string(),
            ])
            .kill_on_drop(true)
            .spawn()
            .expect("sidecar starts")
    };
    let mut sidecar = start_sidecar(&f, &sock);
    let section = json!({"socket": sock.display().to_string(), "restartBackoff": "50ms", "restartBackoffMax": "100ms"});
    let dp = build(&f.ctx(section)).await.expect("connects");
    let snap = backend_plugin::samples::snapshot();
    dp.sync(full(&snap)).await.expect("sync");
    assert_eq!(dp.inspect().await.expect("inspect"), snap.expected_state());

    sidecar.kill().await.expect("stop the sidecar we started");
    eventually("the dataplane to notice", || (!dp.health().is_up()).then_some(())).await;
    let _sidecar = start_sidecar(&f, &sock);
    eventually("the reconnect", || dp.health().is_up().then_some(())).await;
    // The new sidecar has the whole state again.
    let deadline = tokio::time::Instant::now() + patience();
    loop {
        if dp.inspect().await.ok() == Some(snap.expected_state()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the reconnected sidecar never got the full state");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_slow_plugin_gets_coalesced_batches() {
    use proxy_core::health::ProxyHealth;
    use proxy_core::testing::{ServiceBuilder, initial_list, node};
    use proxy_core::{ChangeTracker, PlannerConfig, Proxier, SyncRunner, SyncRunnerConfig, SyncTrigger, TrackerConfig};

    let f = Fixture::new();
    let ctx = f.ctx(f.section(&["--slow-ack", "0.3"]));
    let dp = build(&ctx).await.expect("starts");
    let trigger = SyncTrigger::default();
    let planner =
        PlannerConfig { node_name: "node-a".into(), families: ctx.families, masquerade: ctx.masquerade.clone() };
    let proxier = Arc::new(Proxier::new(
        ChangeTracker::new(TrackerConfig::new(planner)),
        dp.clone(),
        ProxyHealth::new(Duration::from_secs(60)),
        None,
        trigger.clone(),
    ));
    let svc = ServiceBuilder::new("default", "web", "10.96.0.10").port("", 80, "TCP").build();
    let slice = |n: u8| {
        SliceBuilder::new("default", "web-1", "web")
            .port("", 8080, "TCP")
            .endpoint(endpoint(&format!("10.244.1.{n}")))
            .build()
    };
    for ev in initial_list(vec![svc], vec![slice(1)], Some(node("node-a", "172.18.0.11", None))) {
        proxier.handle(ev);
    }
    let runner = SyncRunner::with_trigger(
        SyncRunnerConfig { min_sync_period: Duration::from_millis(1), ..SyncRunnerConfig::default() },
        trigger,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(proxier.clone().run(runner, async move {
        let _ = stop_rx.await;
    }));
    // 30 endpoint changes while the plugin takes 0.3 s per batch.
    for n in 2..=31u8 {
        proxier.handle(ProxyEvent::EndpointSlice(ResourceEvent::Apply(slice(n))));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let target = proxier.desired().generation;
    eventually("convergence", || (proxier.converged() && proxier.synced_generation() >= target).then_some(())).await;
    let batches = f.batches();
    assert!(batches.len() < 10, "{} batches for 31 states: not coalesced", batches.len());
    assert_eq!(dp.inspect().await.expect("inspect"), proxier.desired().expected_state(), "the last state won");
    let _ = stop_tx.send(());
    let _ = task.await;
}
