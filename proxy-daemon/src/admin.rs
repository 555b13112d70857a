//! The admin HTTP servers.
//!
//! Health (`--healthz-bind-address`, default `0.0.0.0:10256`), as kube-proxy's:
//! - `GET /healthz`: 200 while every queued change is applied within
//!   2 × sync-period and the node is eligible (neither deleted nor tainted
//!   `ToBeDeletedByClusterAutoscaler`), else 503; body as kube-proxy's
//!   `{"lastUpdated", "currentTime", "nodeEligible", "healthy", "status"}`
//!   (`lastUpdated` is the current time when healthy, as kube-proxy's),
//!   plus switchyard's fields (`backendDown`, `syncFailing`, ...).
//! - `GET /livez`: the same, but the node's eligibility neither fails it nor
//!   appears in it.
//! - `GET /readyz`: 200 after the first successful sync; before, 503 with the
//!   reason (initial lists incomplete, a source's problem).
//!
//! Metrics (`--metrics-bind-address`, default `127.0.0.1:10249`): the above, plus
//! - `GET /metrics`: Prometheus (OpenMetrics) text.
//!
//! and, only with `--enable-debug-handlers` (`enableDebugHandlers: true`),
//! the debug handlers:
//! - `GET /configz`: the effective configuration as JSON.
//! - `PUT /debug/flags/v` with a number: kube-proxy's runtime verbosity change.
//! - `GET`/`PUT /loglevel`: the tracing filter directive (`debug,kube=info`).
//! - `POST /debug/barrier?timeout=10s`: re-reads the file source, then
//!   answers 200 once everything accepted so far is programmed (504 on timeout).
//! - `GET /debug/state`: desired state (as `inspect` prints it) and sync counters.
//!
//! Why off by default: the metrics port listens on the host network, where
//! every process of the node (any hostNetwork pod) reaches it without
//! credentials. `/debug/state` and `/configz` hand out the whole Service
//! state and configuration, `/loglevel` and `/debug/flags/v` let anyone
//! turn on trace logging (a disk and CPU cost), and `/debug/barrier` and
//! `/debug/state` cost about 0.1 CPU-second each at 5,000 Services. Disabled,
//! each answers 404 with a body naming the flag. Enabled, the heavy ones
//! (`/debug/barrier`, `/debug/state`) run one at a time: a request that
//! arrives while one runs gets 429 with `Retry-After`. kube-proxy serves
//! `/configz` by default; we do not, for the same reasons.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use proxy_core::Proxier;
use proxy_core::health::ProxyHealth;
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::config::parse_duration;
use crate::logging::LogHandle;
use crate::source::file::ReloadRequest;

/// Label: an HTTP status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

/// Label set of the build info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub commit: String,
    pub mode: String,
}

/// The daemon's own metrics.
#[derive(Clone, Debug, Default)]
pub struct DaemonMetrics {
    /// `kubeproxy_proxy_healthz_total{code}`
    pub healthz_total: Family<CodeLabel, Counter>,
    /// `kubeproxy_proxy_livez_total{code}`
    pub livez_total: Family<CodeLabel, Counter>,
    /// `switchyard_build_info{version,commit,mode}` = 1
    pub build_info: Family<BuildLabels, Gauge>,
    /// `switchyard_manifest_errors`: malformed manifests in the last file-source load.
    pub manifest_errors: Gauge,
    /// `switchyard_ready`: 1 after the first successful sync.
    pub ready: Gauge,
}

impl DaemonMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> DaemonMetrics {
        let m = DaemonMetrics::default();
        let kp = registry.sub_registry_with_prefix("kubeproxy");
        kp.register("proxy_healthz", "Cumulative proxy healthz HTTP status", m.healthz_total.clone());
        kp.register("proxy_livez", "Cumulative proxy livez HTTP status", m.livez_total.clone());
        let ours = registry.sub_registry_with_prefix("switchyard");
        ours.register("build_info", "Build information of the running switchyard", m.build_info.clone());
        ours.register(
            "manifest_errors",
            "Malformed manifests found by the file source in its last load",
            m.manifest_errors.clone(),
        );
        ours.register("ready", "1 after the first successful sync", m.ready.clone());
        // process_* as every Go program exports them (kube-proxy's dashboards use them).
        registry.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        m
    }
}

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub proxier: Arc<Proxier>,
    pub health: ProxyHealth,
    pub registry: Arc<Mutex<prometheus_client::registry::Registry>>,
    pub metrics: DaemonMetrics,
    pub log: LogHandle,
    pub config: Arc<serde_json::Value>,
    /// The file source's reload channel, when the source is files.
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
    /// `--enable-debug-handlers`: serve the debug handlers at all.
    pub debug_handlers: bool,
    /// One permit: the heavy debug handlers run one at a time.
    pub heavy: Arc<Semaphore>,
}

/// The debug handlers' paths (served only with `--enable-debug-handlers`).
pub const DEBUG_PATHS: &[&str] = &["/configz", "/debug/state", "/debug/barrier", "/debug/flags/v", "/loglevel"];

/// The flag that turns the debug handlers on (named in refusals and logs).
pub const DEBUG_FLAG: &str = "--enable-debug-handlers";

impl AdminState {
    /// A permit for one heavy handler; concurrent heavy requests share it.
    pub fn heavy_permits() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(1))
    }
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// The health server's routes.
pub fn health_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The metrics server's routes: metrics and health always, the debug
/// handlers only when `state.debug_handlers` (else a 404 naming the flag).
pub fn metrics_router(state: AdminState) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    let router = if state.debug_handlers {
        router
            .route("/configz", get(configz))
            .route("/debug/flags/v", put(set_verbosity))
            .route("/loglevel", get(get_log_level).put(set_log_level))
            .route("/debug/barrier", post(barrier))
            .route("/debug/state", get(debug_state))
    } else {
        DEBUG_PATHS.iter().fold(router, |r, path| r.route(path, any(debug_disabled)))
    };
    router.with_state(state)
}

/// What a debug handler answers while they are off.
async fn debug_disabled(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!(
            "{} is a debug handler, off by default: start switchyard with {DEBUG_FLAG} \
             (configuration key enableDebugHandlers: true) to serve it\n",
            uri.path()
        ),
    )
        .into_response()
}

/// The heavy handlers' gate: one at a time; `None` while another runs.
fn heavy_permit(state: &AdminState) -> Option<tokio::sync::OwnedSemaphorePermit> {
    state.heavy.clone().try_acquire_owned().ok()
}

/// What a heavy handler answers while another one runs.
fn busy() -> Response {
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        "another /debug/barrier or /debug/state request is running; retry when it is done\n",
    )
        .into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).map(|t| t.to_string()).unwrap_or_default()
}

fn json_response(code: StatusCode, body: String) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

/// Which endpoint answers: `/livez` says nothing about the node's eligibility.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HealthPath {
    Healthz,
    Livez,
}

/// kube-proxy's body (`lastUpdated`, `currentTime`, `nodeEligible` on
/// `/healthz` only, `healthy`, `status` per family), then switchyard's own fields.
fn health_body(state: &AdminState, healthy: bool, path: HealthPath) -> String {
    let st = state.health.status(Instant::now());
    let now = SystemTime::now();
    // As kube-proxy: a healthy answer says "updated now" (older releases
    // reported each sync-loop run, and monitors compare it with the clock);
    // an unhealthy one says when the last sync succeeded.
    let last = if healthy { Some(now) } else { st.last_updated };
    let status: serde_json::Map<String, serde_json::Value> = st
        .families
        .iter()
        .map(|(f, (t, ok))| (f.as_str().to_string(), serde_json::json!({"lastUpdated": rfc3339(*t), "healthy": ok})))
        .collect();
    let mut body = serde_json::json!({
        "lastUpdated": last.map(rfc3339).unwrap_or_else(|| rfc3339(SystemTime::UNIX_EPOCH)),
        "currentTime": rfc3339(now),
        "healthy": healthy,
        "status": status,
        // Why the dataplane cannot program right now (a plugin being restarted,
        // a datapath it could not re-attach); null when it can.
        "backendDown": st.backend_down,
        // The error of a failed full sync (a retry, a periodic repair), while
        // no sync has succeeded since: the kernel is known to differ.
        "syncFailing": st.sync_failing,
        // Why a source cannot deliver a complete, valid view (by source).
        "sourceProblems": state.health.source_problems(),
        // What this dataplane implements, as configured: a semantics missing
        // here (HostNetworkClients without ebpf.cgroupPath, say) is not served.
        "capabilities": state.proxier.dataplane().capabilities(),
    });
    if path == HealthPath::Healthz {
        body["nodeEligible"] = serde_json::Value::Bool(!st.node_deleting);
    }
    body.to_string()
}

async fn healthz(State(state): State<AdminState>) -> Response {
    let healthy = state.health.status(Instant::now()).healthy;
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    state.metrics.healthz_total.get_or_create(&CodeLabel { code: code.as_u16().to_string() }).inc();
    json_response(code, health_body(&state, healthy, HealthPath::Healthz))
}

async fn livez(State(state): State<AdminState>) -> Response {
    let healthy = !state.health.late(Instant::now());
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    state.metrics.livez_total.get_or_create(&CodeLabel { code: code.as_u16().to_string() }).inc();
    json_response(code, health_body(&state, healthy, HealthPath::Livez))
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.health.not_ready_reason() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    state.metrics.ready.set(i64::from(state.health.ready()));
    let mut body = String::new();
    let result = {
        let reg = state.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut body, &reg)
    };
    match result {
        Ok(()) => {
            let mut r = (StatusCode::OK, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            r
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}\n")).into_response(),
    }
}

async fn configz(State(state): State<AdminState>) -> Response {
    json_response(StatusCode::OK, state.config.to_string())
}

async fn set_verbosity(State(state): State<AdminState>, body: String) -> Response {
    match body.trim().parse::<u8>() {
        Ok(v) => match state.log.set_verbosity(v) {
            Ok(()) => {
                tracing::info!(verbosity = v, "log verbosity changed");
                (StatusCode::OK, format!("successfully set verbosity to {v}\n")).into_response()
            }
            Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        },
        Err(_) => (StatusCode::BAD_REQUEST, format!("{:?} is not a verbosity (0-10)\n", body.trim())).into_response(),
    }
}

async fn get_log_level(State(state): State<AdminState>) -> Response {
    (StatusCode::OK, format!("{}\n", state.log.current())).into_response()
}

async fn set_log_level(State(state): State<AdminState>, body: String) -> Response {
    match state.log.set(body.trim()) {
        Ok(()) => {
            tracing::info!(filter = body.trim(), "log filter changed");
            (StatusCode::OK, format!("{}\n", body.trim())).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct BarrierQuery {
    timeout: Option<String>,
}

async fn barrier(State(state): State<AdminState>, Query(q): Query<BarrierQuery>) -> Response {
    // Held until the answer: waiting for convergence is cheap, but the
    // reload it starts re-reads every manifest.
    let Some(_permit) = heavy_permit(&state) else { return busy() };
    let timeout = match q.timeout.as_deref().map(parse_duration).transpose() {
        Ok(t) => t.unwrap_or(Duration::from_secs(30)),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("timeout: {e}\n")).into_response(),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut manifest_errors = Vec::new();
    if let Some(reload) = &state.reload {
        let (tx, rx) = oneshot::channel();
        if reload.send(tx).await.is_ok() {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(report)) => manifest_errors = report.errors.iter().map(ToString::to_string).collect(),
                Ok(Err(_)) => {}
                Err(_) => {
                    return json_response(StatusCode::GATEWAY_TIMEOUT, r#"{"error":"source reload timed out"}"#.into());
                }
            }
        }
    }
    let mut synced = state.proxier.subscribe();
    loop {
        if state.proxier.converged() {
            let s = synced.borrow().clone();
            let body = serde_json::json!({
                "generation": state.proxier.synced_generation(),
                "syncs": s.syncs,
                "manifestErrors": manifest_errors,
            });
            return json_response(StatusCode::OK, body.to_string());
        }
        // A sync finishing wakes us; a periodic tick covers changes that
        // cancelled out (no sync follows them).
        let wait = tokio::time::timeout(Duration::from_millis(50), synced.changed());
        if tokio::time::timeout_at(deadline, wait).await.is_err() {
            let body = serde_json::json!({
                "error": "not converged in time",
                "initialListsDone": state.proxier.is_synced(),
                "manifestErrors": manifest_errors,
            });
            return json_response(StatusCode::GATEWAY_TIMEOUT, body.to_string());
        }
    }
}

async fn debug_state(State(state): State<AdminState>) -> Response {
    let Some(_permit) = heavy_permit(&state) else { return busy() };
    let desired = state.proxier.desired();
    let s = state.proxier.subscribe().borrow().clone();
    let body = serde_json::json!({
        "generation": desired.generation,
        "syncedGeneration": s.generation,
        "syncs": s.syncs,
        "converged": state.proxier.converged(),
        "ready": state.health.ready(),
        "desired": desired.expected_state(),
    });
    json_response(StatusCode::OK, body.to_string())
}

/// Binds a TCP listener (in the process's network namespace).
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "admin server failed");
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use proxy_core::testing::RecordingDataplane;
    use proxy_core::{ChangeTracker, PlannerConfig, SyncRunner, SyncRunnerConfig, SyncTrigger, TrackerConfig};

    use super::*;

    /// A proxier whose initial lists have not completed (none are fed
    /// unless a test does): a barrier waits, holding the heavy permit.
    fn state(debug_handlers: bool) -> (AdminState, SyncTrigger) {
        let tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig::new("node-a")));
        let health = ProxyHealth::new(Duration::from_secs(60));
        let trigger = SyncTrigger::default();
        let proxier = Proxier::new(tracker, Arc::new(RecordingDataplane::new()), health.clone(), None, trigger.clone());
        let state = AdminState {
            proxier: Arc::new(proxier),
            health,
            registry: Arc::new(Mutex::new(prometheus_client::registry::Registry::default())),
            metrics: DaemonMetrics::default(),
            log: LogHandle::detached(),
            config: Arc::new(serde_json::json!({"mode": "recording"})),
            reload: None,
            debug_handlers,
            heavy: AdminState::heavy_permits(),
        };
        (state, trigger)
    }

    async fn serve_router(router: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, router, std::future::pending()));
        (addr, task)
    }

    /// One HTTP/1.0 exchange on a blocking thread: (status, body).
    async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        let (method, path, body) = (method.to_string(), path.to_string(), body.to_string());
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "{method} {path} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).unwrap();
            let code = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            (code, raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
        })
        .await
        .unwrap()
    }

    const REQUESTS: &[(&str, &str, &str)] = &[
        ("GET", "/configz", ""),
        ("GET", "/debug/state", ""),
        ("POST", "/debug/barrier?timeout=10ms", ""),
        ("PUT", "/debug/flags/v", "2"),
        ("GET", "/loglevel", ""),
        ("PUT", "/loglevel", "info"),
    ];

    #[tokio::test]
    async fn healthz_and_livez_answer_as_kube_proxys() {
        let (st, _trigger) = state(false);
        let health = st.health.clone();
        let (addr, task) = serve_router(health_router(st)).await;
        let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
        let age = |v: &serde_json::Value| {
            let t: jiff::Timestamp = v["lastUpdated"].as_str().unwrap().parse().unwrap();
            jiff::Timestamp::now().duration_since(t).as_secs_f64()
        };
        let (code, text) = http(addr, "GET", "/healthz", "").await;
        let v = json(&text);
        assert_eq!((code, &v["nodeEligible"], &v["healthy"]), (200, &true.into(), &true.into()), "{text}");
        assert!(age(&v) < 60.0, "healthy: lastUpdated is now, as kube-proxy's: {text}");
        // The node leaves (deleted, or tainted by the cluster autoscaler): /healthz
        // fails so load balancers drain it; /livez does not and says nothing of it.
        health.set_node_deleting(true);
        let (code, text) = http(addr, "GET", "/healthz", "").await;
        let v = json(&text);
        assert_eq!((code, &v["nodeEligible"], &v["healthy"]), (503, &false.into(), &false.into()), "{text}");
        assert!(age(&v) > 3600.0, "unhealthy and never synced: lastUpdated is not now: {text}");
        let (code, text) = http(addr, "GET", "/livez", "").await;
        assert_eq!(code, 200, "{text}");
        assert!(json(&text).get("nodeEligible").is_none(), "{text}");
        task.abort();
    }

    #[tokio::test]
    async fn debug_handlers_are_refused_by_default_and_name_the_flag() {
        let (addr, task) = serve_router(metrics_router(state(false).0)).await;
        for (method, path, body) in REQUESTS {
            let (code, text) = http(addr, method, path, body).await;
            assert_eq!(code, 404, "{method} {path}: {text}");
            assert!(text.contains(DEBUG_FLAG) && text.contains("enableDebugHandlers"), "{method} {path}: {text}");
        }
        assert_eq!(http(addr, "GET", "/metrics", "").await.0, 200, "metrics stay");
        assert_eq!(http(addr, "GET", "/livez", "").await.0, 200, "health stays");
        task.abort();
    }

    #[tokio::test]
    async fn debug_handlers_are_served_with_the_opt_in() {
        let (addr, task) = serve_router(metrics_router(state(true).0)).await;
        for (method, path, body) in REQUESTS {
            let (code, text) = http(addr, method, path, body).await;
            // The barrier is served: it times out, as nothing syncs here.
            let want = if path.starts_with("/debug/barrier") { 504 } else { 200 };
            assert_eq!(code, want, "{method} {path}: {text}");
        }
        task.abort();
    }

    #[tokio::test]
    async fn a_concurrent_heavy_request_is_refused() {
        let (state, trigger) = state(true);
        let proxier = state.proxier.clone();
        let runner = SyncRunner::with_trigger(
            SyncRunnerConfig { min_sync_period: Duration::ZERO, ..SyncRunnerConfig::default() },
            trigger,
        );
        let sync_loop = tokio::spawn(proxier.clone().run(runner, std::future::pending()));
        let (addr, task) = serve_router(metrics_router(state)).await;
        // Holds the heavy permit until the proxier converges (never, until
        // the initial lists are fed below).
        let barrier = tokio::spawn(http(addr, "POST", "/debug/barrier?timeout=10m", ""));
        // Until the barrier holds the permit, /debug/state is served (200):
        // poll until it is refused, which must happen while the barrier runs.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, text) = http(addr, "GET", "/debug/state", "").await;
            if code == 429 {
                assert!(text.contains("retry"), "{text}");
                break;
            }
            assert_eq!(code, 200, "{text}");
            assert!(Instant::now() < deadline, "/debug/state was never refused while a barrier ran");
            tokio::task::yield_now().await;
        }
        let (code, _) = http(addr, "POST", "/debug/barrier?timeout=10ms", "").await;
        assert_eq!(code, 429, "a second barrier is refused too");
        assert!(!barrier.is_finished(), "the first barrier is still running");
        // Cheap handlers are not gated.
        assert_eq!(http(addr, "GET", "/configz", "").await.0, 200);

        // The lists complete, the first sync runs, the barrier answers, and
        // its permit is free again.
        for ev in proxy_core::testing::initial_list(Vec::new(), Vec::new(), None) {
            proxier.handle(ev);
        }
        let (code, text) = barrier.await.unwrap();
        assert_eq!(code, 200, "{text}");
        assert_eq!(http(addr, "GET", "/debug/state", "").await.0, 200, "the permit is released");
        task.abort();
        sync_loop.abort();
    }
}
