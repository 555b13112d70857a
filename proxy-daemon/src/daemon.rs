//! Wiring: configuration in, a running proxy out.
//!
//! Order matters, and follows one rule: nothing in the kernel changes until
//! everything that can be checked without changing it has been checked.
//! 1. Prepare the source (kubeconfig, manifest path) and the backend context.
//! 2. Probe the chosen mode: unavailable means exit before touching anything.
//! 3. Bind the health and metrics ports (another proxy still running shows here).
//! 4. Remove the other modes' leftovers; build the chosen backend, which
//!    adopts its own leftovers at its first (full) sync.
//! 5. Run the source, the sync loop, the admin servers and the
//!    healthCheckNodePort servers until SIGTERM or SIGINT; then stop,
//!    leaving every rule in place.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxy_core::health::ProxyHealth;
use proxy_core::metrics::ProxyMetrics;
use proxy_core::{
    BackendContext, BackendFactory, ChangeTracker, DataplaneError, ErrorChain, FamilySet, IpFamily, MasqueradeConfig,
    NetNamespace, PlannerConfig, Proxier, ProxyEvent, Registry, SyncRunner, SyncRunnerConfig, SyncTrigger,
    TrackerConfig,
};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::admin::{self, AdminState, BuildLabels, DaemonMetrics};
use crate::config::{Config, SourceSpec, format_duration};
use crate::healthcheck::HealthCheckServers;
use crate::logging::LogHandle;
use crate::source::EventSink;
use crate::source::file::{self, FileSource};
use crate::source::kube::{KubeSource, KubeSourceError, client_config};
use crate::{DaemonError, build_info};

/// A prepared source: checked, not yet running.
pub enum PreparedSource {
    Kube(KubeSource),
    File(PathBuf),
}

impl std::fmt::Debug for PreparedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PreparedSource::Kube(k) => k.fmt(f),
            PreparedSource::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// This node's name: `--hostname-override`, else the host name, lowercased.
pub fn node_name(cfg: &Config) -> String {
    cfg.hostname_override.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
            .trim()
            .to_lowercase()
    })
}

/// Checks the source's settings without connecting to anything.
pub async fn prepare_source(cfg: &Config, node: &str) -> Result<PreparedSource, DaemonError> {
    match &cfg.source {
        SourceSpec::File(path) => {
            if let Err(e) = std::fs::metadata(path) {
                return Err(DaemonError::Config(format!("source file:{}: {e}", path.display())));
            }
            Ok(PreparedSource::File(path.clone()))
        }
        SourceSpec::Kube => {
            let kc = client_config(cfg.kubeconfig.as_deref(), cfg.master.as_deref()).await.map_err(|e| match e {
                KubeSourceError::Kubeconfig { .. } | KubeSourceError::Master { .. } => {
                    DaemonError::Config(ErrorChain(&e).to_string())
                }
                other => DaemonError::Startup(ErrorChain(&other).to_string()),
            })?;
            info!(api_server = %kc.cluster_url, "using the Kubernetes API server");
            let src = KubeSource::new(kc, node, cfg.service_proxy_name.clone())
                .map_err(|e| DaemonError::Startup(ErrorChain(&e).to_string()))?;
            Ok(PreparedSource::Kube(src))
        }
    }
}

/// Node IPs for the backend: `--bind-address`, else the Node object's addresses.
pub(crate) async fn node_ips(cfg: &Config, source: &PreparedSource, node: &str) -> Vec<IpAddr> {
    if let Some(ip) = cfg.bind_address {
        return vec![ip];
    }
    let node_obj = match source {
        PreparedSource::File(path) => file::read_once(path).0.nodes.get(node).cloned(),
        PreparedSource::Kube(k) => k.get_node(Duration::from_secs(10)).await,
    };
    let Some(node_obj) = node_obj else {
        warn!(
            node,
            "this node's Node was not found; node IPs unknown (NodePort on primary addresses and SNAT may be affected)"
        );
        return Vec::new();
    };
    let ctx = proxy_core::convert::ConvertContext { families: FamilySet::DUAL, service_proxy_name: None };
    match proxy_core::convert::node_from_k8s(&node_obj, &ctx) {
        Ok(proxy_core::convert::Conversion::Accepted { value, .. }) => {
            IpFamily::ALL.iter().filter_map(|f| value.primary_ip(*f)).collect()
        }
        _ => Vec::new(),
    }
}

/// The backend context for a configuration.
pub fn backend_context(
    cfg: &Config,
    node: &str,
    node_ips: Vec<IpAddr>,
    mode: &str,
    metrics: Arc<Mutex<prometheus_client::registry::Registry>>,
) -> BackendContext {
    let families = cfg.ip_families.unwrap_or_else(|| {
        let v4 = node_ips.iter().any(IpAddr::is_ipv4);
        let v6 = node_ips.iter().any(IpAddr::is_ipv6);
        match (v4, v6) {
            (false, true) => FamilySet::V6,
            (true, true) => FamilySet::DUAL,
            _ => FamilySet::V4,
        }
    });
    BackendContext {
        node_name: node.into(),
        families,
        netns: cfg.netns.as_ref().map_or_else(NetNamespace::current, NetNamespace::at),
        masquerade: MasqueradeConfig { all: cfg.masquerade_all, cluster_cidrs: cfg.cluster_cidrs.clone() },
        nodeport_addresses: cfg.node_port_addresses.clone(),
        node_ips,
        section: cfg.section(mode),
        metrics,
    }
}

/// `switchyard --cleanup`: every mode's cleanup, even modes the node cannot run.
pub async fn cleanup_all(cfg: &Config, registry: &Registry) -> Result<(), DaemonError> {
    let node = node_name(cfg);
    let metrics = Arc::new(Mutex::new(prometheus_client::registry::Registry::default()));
    let mut failed = Vec::new();
    for factory in registry.factories() {
        let ctx = backend_context(cfg, &node, Vec::new(), factory.mode(), metrics.clone());
        match factory.cleanup(&ctx).await {
            Ok(()) => info!(mode = factory.mode(), "cleaned up"),
            Err(e) => {
                error!(mode = factory.mode(), error = %ErrorChain(&e), "cleanup failed");
                failed.push(format!("{}: {}", factory.mode(), ErrorChain(&e)));
            }
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(DaemonError::Runtime(format!("cleanup failed: {}", failed.join("; ")))) }
}

/// Resolves when SIGTERM or SIGINT arrives (or the returned sender fires).
fn shutdown_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    let signals = tx.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => info!(signal = "SIGTERM", "stopping; rules stay in place"),
            _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "stopping; rules stay in place"),
        }
        let _ = signals.send(true);
    });
    (tx, rx)
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn bind_or_report(
    what: &str,
    addr: std::net::SocketAddr,
    hard_fail: bool,
) -> Result<Option<tokio::net::TcpListener>, DaemonError> {
    match admin::bind(addr) {
        Ok(l) => Ok(Some(l)),
        Err(e) if hard_fail => Err(DaemonError::Startup(format!("cannot bind the {what} server to {addr}: {e}"))),
        Err(e) => {
            error!(address = %addr, error = %e, "cannot bind the {what} server; continuing without it (bindAddressHardFail is off)");
            Ok(None)
        }
    }
}

/// Runs the proxy until a signal. Returns Ok on a clean stop.
pub async fn run(cfg: Config, registry: Registry, log: LogHandle) -> Result<(), DaemonError> {
    // Signals are caught from the start: a SIGTERM during start-up is a clean stop too.
    let (_stop_tx, stop_rx) = shutdown_signal();
    let node = node_name(&cfg);
    let factory: Arc<dyn BackendFactory> =
        registry.get(&cfg.mode).map_err(|e| DaemonError::Config(e.to_string()))?.clone();
    for item in &cfg.ignored {
        warn!(setting = %item, "kube-proxy setting has no effect in switchyard");
    }

    // 1. Source and context.
    let source = prepare_source(&cfg, &node).await?;
    let metrics_registry = Arc::new(Mutex::new(prometheus_client::registry::Registry::default()));
    let ips = node_ips(&cfg, &source, &node).await;
    let ctx = backend_context(&cfg, &node, ips, &cfg.mode, metrics_registry.clone());
    info!(
        node = %node,
        mode = %cfg.mode,
        source = %cfg.source,
        netns = %ctx.netns.label(),
        node_ips = ?ctx.node_ips,
        ipv4 = ctx.families.ipv4,
        ipv6 = ctx.families.ipv6,
        sync_period = %format_duration(cfg.sync_period),
        min_sync_period = %format_duration(cfg.min_sync_period),
        "configuration loaded"
    );

    // 2. Probe before touching anything.
    factory.probe(&ctx).await.map_err(|e| match e {
        DataplaneError::Unavailable { mode, reason } => DaemonError::Unavailable { mode, reason },
        other => DaemonError::Startup(format!("probing proxy mode {}: {}", cfg.mode, ErrorChain(&other))),
    })?;

    // 3. Ports.
    let health_listener = bind_or_report("health", cfg.healthz_bind_address, cfg.bind_address_hard_fail)?;
    let metrics_listener = bind_or_report("metrics", cfg.metrics_bind_address, cfg.bind_address_hard_fail)?;

    // 4. Other modes' leftovers, then our backend.
    for other in registry.factories().filter(|f| f.mode() != cfg.mode) {
        let octx = BackendContext { section: cfg.section(other.mode()), ..ctx.clone() };
        match other.cleanup(&octx).await {
            Ok(()) => info!(mode = other.mode(), "removed leftovers of another proxy mode (if any)"),
            Err(e) => warn!(mode = other.mode(), error = %ErrorChain(&e), "cannot remove another mode's leftovers"),
        }
    }
    let dataplane = factory.build(&ctx).await.map_err(|e| match e {
        DataplaneError::Unavailable { mode, reason } => DaemonError::Unavailable { mode, reason },
        other => DaemonError::Startup(format!("building proxy mode {}: {}", cfg.mode, ErrorChain(&other))),
    })?;
    info!(mode = dataplane.mode(), capabilities = ?dataplane.capabilities().0, "backend ready");
    for limitation in dataplane.limitations() {
        warn!(mode = dataplane.mode(), "{limitation}");
    }

    // 5. Run.
    let health = ProxyHealth::new(cfg.sync_period * 2);
    let (proxy_metrics, daemon_metrics) = {
        let mut reg = metrics_registry.lock().unwrap_or_else(|e| e.into_inner());
        (ProxyMetrics::register(&mut reg), DaemonMetrics::register(&mut reg))
    };
    let (version, commit) = build_info();
    daemon_metrics
        .build_info
        .get_or_create(&BuildLabels { version: version.into(), commit: commit.into(), mode: cfg.mode.clone() })
        .set(1);
    let planner =
        PlannerConfig { node_name: node.as_str().into(), families: ctx.families, masquerade: ctx.masquerade.clone() };
    let tracker = ChangeTracker::new(TrackerConfig {
        planner,
        service_proxy_name: cfg.service_proxy_name.clone(),
        wait_for_node: true,
    });
    let trigger = SyncTrigger::default();
    let runner_cfg = SyncRunnerConfig {
        min_sync_period: cfg.min_sync_period,
        sync_period: cfg.sync_period,
        ..SyncRunnerConfig::default()
    };
    let runner = SyncRunner::with_trigger(runner_cfg, trigger.clone());
    let proxier = Arc::new(Proxier::new(tracker, dataplane, health.clone(), Some(proxy_metrics), trigger));

    if *stop_rx.borrow() {
        info!("stopped during start-up");
        return Ok(());
    }
    let sink: EventSink = {
        let proxier = proxier.clone();
        Arc::new(move |ev: ProxyEvent| {
            proxier.handle(ev);
        })
    };

    let mut tasks = tokio::task::JoinSet::new();
    let mut reload_tx = None;
    match source {
        PreparedSource::File(path) => {
            let (tx, rx) = mpsc::channel(4);
            reload_tx = Some(tx);
            let src = FileSource::new(path, cfg.file_poll_interval, sink.clone())
                .with_error_gauge(daemon_metrics.manifest_errors.clone())
                .with_status(health.clone())
                .for_node(&node);
            let src = Arc::new(src);
            let stop = stop_rx.clone();
            tasks.spawn(async move { src.run(rx, wait_for(stop)).await });
        }
        PreparedSource::Kube(k) => {
            let stop = stop_rx.clone();
            let k = k.with_status(health.clone());
            tasks.spawn(async move { k.run(sink.clone(), wait_for(stop)).await });
        }
    }

    let admin_state = AdminState {
        proxier: proxier.clone(),
        health: health.clone(),
        registry: metrics_registry.clone(),
        metrics: daemon_metrics.clone(),
        log,
        config: Arc::new(serde_json::to_value(&cfg).unwrap_or_default()),
        reload: reload_tx,
        debug_handlers: cfg.enable_debug_handlers,
        heavy: AdminState::heavy_permits(),
    };
    if let Some(l) = health_listener {
        info!(address = %cfg.healthz_bind_address, "serving /healthz, /livez, /readyz");
        let router = admin::health_router(admin_state.clone());
        tasks.spawn(admin::serve(l, router, wait_for(stop_rx.clone())));
    }
    if let Some(l) = metrics_listener {
        if cfg.enable_debug_handlers {
            let paths = admin::DEBUG_PATHS.join(", ");
            if cfg.metrics_bind_address.ip().is_loopback() {
                info!(address = %cfg.metrics_bind_address, debug_handlers = %paths, "serving /metrics and the debug handlers");
            } else {
                // Anyone who reaches that address can read the state and change the log level.
                warn!(address = %cfg.metrics_bind_address, debug_handlers = %paths, "serving the debug handlers on a non-loopback address, without authentication");
            }
        } else {
            info!(
                address = %cfg.metrics_bind_address,
                "serving /metrics (debug handlers off; {} turns them on)",
                admin::DEBUG_FLAG
            );
        }
        let router = admin::metrics_router(admin_state.clone());
        tasks.spawn(admin::serve(l, router, wait_for(stop_rx.clone())));
    }
    let hc = HealthCheckServers::new(
        ctx.netns.clone(),
        ctx.families,
        ctx.nodeport_addresses.clone(),
        ctx.node_ips.clone(),
        health.clone(),
    );
    tasks.spawn(hc.run(proxier.subscribe(), wait_for(stop_rx.clone())));
    {
        // Lifecycle: the first successful sync.
        let mut synced = proxier.subscribe();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            tokio::select! {
                r = synced.wait_for(|s| s.syncs > 0) => if let Ok(s) = r {
                    info!(services = s.snapshot.as_ref().map_or(0, |s| s.len()), "first sync done; ready");
                },
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }

    info!("running");
    proxier.clone().run(runner, wait_for(stop_rx.clone())).await;
    // Every task watches the same signal; give them a moment to finish
    // their HTTP responses, then stop. Rules stay in the kernel.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        warn!("some tasks did not stop in time");
    }
    info!(synced_generation = proxier.synced_generation(), "stopped cleanly; programmed rules left in place");
    Ok(())
}
