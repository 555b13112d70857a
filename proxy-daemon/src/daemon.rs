//! Wiring: configuration in, a running proxy out.
//!
//! Order matters, and follows one rule: nothing in the kernel changes until
//! everything that can be checked without changing it has been checked.
//! 1. Prepare the source (kubeconfig, manifest path) and the backend context.
//! 2. Probe the chosen mode: unavailable means exit before touching anything.
//! 3. Apply kube-proxy's process settings (OOM score, conntrack sysctls),
//!    then bind the health and metrics ports (another proxy still running shows here).
//! 4. Remove the other modes' leftovers; build the chosen backend, which
//!    adopts its own leftovers at its first (full) sync.
//! 5. Run the source, the sync loop, the admin servers and the
//!    healthCheckNodePort servers until SIGTERM or SIGINT; then stop,
//!    leaving every rule in place.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
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
use crate::config::{Config, LocalDetection, SourceSpec, format_duration};
use crate::healthcheck::HealthCheckServers;
use crate::logging::LogHandle;
use crate::source::EventSink;
use crate::source::file::{self, FileSource};
use crate::source::kube::{KubeSource, KubeSourceError, client_config};
use crate::{DaemonError, build_info};

/// A prepared source: checked, not yet running.
pub enum PreparedSource {
    /// Boxed: the client and its metrics handles make it much larger than a path.
    Kube(Box<KubeSource>),
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
            let src = KubeSource::new(kc, node, cfg.service_proxy_name.clone(), &cfg.client)
                .map_err(|e| DaemonError::Startup(ErrorChain(&e).to_string()))?;
            Ok(PreparedSource::Kube(Box::new(src)))
        }
    }
}

/// What the daemon learns from its own Node at start.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    /// `--bind-address`, else the Node's primary addresses.
    pub ips: Vec<IpAddr>,
    /// The Node's `spec.podCIDRs` (for `detectLocalMode: NodeCIDR`).
    pub pod_cidrs: Vec<IpNet>,
}

/// How long kube-proxy waits for its Node's podCIDRs in NodeCIDR mode (node.go).
const POD_CIDR_TIMEOUT: Duration = Duration::from_secs(300);

/// Reads this node's Node once (from the manifests or the API server).
async fn read_node(source: &PreparedSource, node: &str) -> Option<Node> {
    match source {
        PreparedSource::File(path) => file::read_once(path).0.nodes.get(node).cloned(),
        PreparedSource::Kube(k) => k.get_node(Duration::from_secs(10)).await,
    }
}

fn pod_cidrs_of(node: &Node) -> Vec<IpNet> {
    let spec = node.spec.as_ref();
    let list = spec.and_then(|s| s.pod_cidrs.clone()).filter(|l| !l.is_empty());
    let list = list.or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c])).unwrap_or_default();
    list.iter().filter_map(|c| c.parse::<IpNet>().ok()).map(|n| n.trunc()).collect()
}

/// This node's IPs and pod CIDRs. In NodeCIDR mode, waits (as kube-proxy,
/// up to 5 minutes) until the Node has podCIDRs.
pub(crate) async fn node_facts(cfg: &Config, source: &PreparedSource, node: &str) -> Result<NodeFacts, DaemonError> {
    let mut node_obj = read_node(source, node).await;
    if cfg.local_detection == LocalDetection::NodeCidr {
        let deadline = tokio::time::Instant::now() + POD_CIDR_TIMEOUT;
        while node_obj.as_ref().is_none_or(|n| pod_cidrs_of(n).is_empty()) {
            if tokio::time::Instant::now() >= deadline {
                let what = if node_obj.is_none() { "node to exist" } else { "PodCIDR allocation on node" };
                return Err(DaemonError::Startup(format!(
                    "detectLocalMode NodeCIDR: timeout waiting for {what} {node:?}"
                )));
            }
            info!(node, "detectLocalMode NodeCIDR: waiting for the Node's spec.podCIDRs");
            tokio::time::sleep(Duration::from_secs(1)).await;
            node_obj = read_node(source, node).await;
        }
    }
    let pod_cidrs = node_obj.as_ref().map(pod_cidrs_of).unwrap_or_default();
    if let Some(ip) = cfg.bind_address {
        return Ok(NodeFacts { ips: vec![ip], pod_cidrs });
    }
    let Some(node_obj) = node_obj else {
        warn!(
            node,
            "this node's Node was not found; node IPs unknown (NodePort on primary addresses and SNAT may be affected)"
        );
        return Ok(NodeFacts { ips: Vec::new(), pod_cidrs });
    };
    let ctx = proxy_core::convert::ConvertContext { families: FamilySet::DUAL, service_proxy_name: None };
    let ips = match proxy_core::convert::node_from_k8s(&node_obj, &ctx) {
        Ok(proxy_core::convert::Conversion::Accepted { value, .. }) => {
            IpFamily::ALL.iter().filter_map(|f| value.primary_ip(*f)).collect()
        }
        _ => Vec::new(),
    };
    Ok(NodeFacts { ips, pod_cidrs })
}

/// The CIDRs whose sources are pod traffic: `clusterCIDR`, or the Node's
/// podCIDRs in NodeCIDR mode (one per family, the first, as kube-proxy).
pub fn local_cidrs(cfg: &Config, facts: &NodeFacts) -> Vec<IpNet> {
    let list = match cfg.local_detection {
        LocalDetection::NodeCidr => &facts.pod_cidrs,
        _ => &cfg.cluster_cidrs,
    };
    let mut out: Vec<IpNet> = Vec::new();
    for net in list {
        if !out.iter().any(|o| IpFamily::of(&o.addr()) == IpFamily::of(&net.addr())) {
            out.push(*net);
        }
    }
    out
}

/// The backend context for a configuration.
pub fn backend_context(
    cfg: &Config,
    node: &str,
    facts: &NodeFacts,
    mode: &str,
    metrics: Arc<Mutex<prometheus_client::registry::Registry>>,
) -> BackendContext {
    let families = cfg.ip_families.unwrap_or_else(|| crate::config::families_of(&facts.ips));
    BackendContext {
        node_name: node.into(),
        families,
        netns: cfg.netns.as_ref().map_or_else(NetNamespace::current, NetNamespace::at),
        masquerade: MasqueradeConfig { all: cfg.masquerade_all, cluster_cidrs: local_cidrs(cfg, facts) },
        nodeport_addresses: cfg.node_port_addresses.resolve(&facts.ips),
        node_ips: facts.ips.clone(),
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
        let ctx = backend_context(cfg, &node, &NodeFacts::default(), factory.mode(), metrics.clone());
        match factory.cleanup(&ctx).await {
            Ok(()) => info!(mode = factory.mode(), "cleaned up"),
            Err(e) => {
                error!(mode = factory.mode(), error = %ErrorChain(&e), "cleanup failed");
                failed.push(format!("{}: {}", factory.mode(), ErrorChain(&e)));
            }
        }
    }
    // kube-proxy's leftovers too, so that `--cleanup` is the one command for
    // a node moving between the two proxies.
    let opts = kube_proxy_leftovers_options(cfg, true);
    match tokio::task::spawn_blocking(move || crate::kube_proxy_leftovers::remove_and_log(&opts)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => failed.push(format!("kube-proxy's leftovers: {e}")),
        Err(e) => failed.push(format!("kube-proxy's leftovers: {e}")),
    }
    if failed.is_empty() { Ok(()) } else { Err(DaemonError::Runtime(format!("cleanup failed: {}", failed.join("; ")))) }
}

/// Where and how kube-proxy's leftovers are removed. `ipvs_node_ports`: also
/// NodePort-shaped virtual servers (not while our own ipvs mode serves the same keys).
fn kube_proxy_leftovers_options(cfg: &Config, ipvs_node_ports: bool) -> crate::kube_proxy_leftovers::Options {
    crate::kube_proxy_leftovers::Options {
        netns: cfg.netns.as_ref().map_or_else(NetNamespace::current, NetNamespace::at),
        ipvs_node_ports,
        node_port_range: backend_ipvs::IpvsConfig::from_section(&cfg.section("ipvs"))
            .unwrap_or_default()
            .node_port_range,
    }
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
    addr: Option<std::net::SocketAddr>,
    hard_fail: bool,
) -> Result<Option<tokio::net::TcpListener>, DaemonError> {
    let Some(addr) = addr else {
        info!("the {what} server is off (its port is 0)");
        return Ok(None);
    };
    match admin::bind(addr) {
        Ok(l) => Ok(Some(l)),
        Err(e) if hard_fail => Err(DaemonError::Startup(format!("cannot bind the {what} server to {addr}: {e}"))),
        Err(e) => {
            error!(address = %addr, error = %e, "cannot bind the {what} server; continuing without it (bindAddressHardFail is off)");
            Ok(None)
        }
    }
}

/// kube-proxy's conntrack sysctls, in the programmed namespace.
fn apply_conntrack(cfg: &Config) -> Result<(), DaemonError> {
    let netns = cfg.netns.as_ref().map_or_else(NetNamespace::current, NetNamespace::at);
    let mut sys = crate::conntrack::ProcSysctls::new(netns);
    match crate::conntrack::apply(&cfg.conntrack, &mut sys) {
        Ok(written) => {
            for (name, value) in written {
                info!(sysctl = %format!("net.netfilter.{name}"), value, "set conntrack sysctl (kube-proxy's conntrack settings)");
            }
            Ok(())
        }
        Err(e) => Err(DaemonError::Startup(format!(
            "{}; set the conntrack settings to 0 to leave the kernel's values (a container needs /proc/sys writable, i.e. privileged, to change them)",
            ErrorChain(&e)
        ))),
    }
}

/// kube-proxy's `oomScoreAdj` for this process; a failure is logged, as kube-proxy does.
fn apply_oom_score_adj(value: i32) {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", value.to_string()) {
        warn!(oom_score_adj = value, error = %e, "cannot set the OOM score adjustment");
    }
}

/// [`apply_conntrack`] on a blocking thread (it writes /proc files).
async fn apply_conntrack_off_thread(cfg: &Config) -> Result<(), DaemonError> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || apply_conntrack(&cfg))
        .await
        .map_err(|e| DaemonError::Startup(format!("conntrack settings: {e}")))?
}

/// `--init-only`: what needs full privileges (the conntrack sysctls and the
/// mode's own, see [`BackendFactory::init_only`]), then exit. The main
/// process can then run with only `CAP_NET_ADMIN` and a read-only `/proc/sys`
/// (deploy/overlays/capabilities).
pub async fn init_only(cfg: &Config, registry: &Registry) -> Result<(), DaemonError> {
    let factory = registry.get(&cfg.mode).map_err(|e| DaemonError::Config(e.to_string()))?.clone();
    apply_conntrack_off_thread(cfg).await?;
    // The Node is not read here (an init container may run before the API
    // server is reachable): what a mode sets does not depend on its addresses.
    let metrics = Arc::new(Mutex::new(prometheus_client::registry::Registry::default()));
    let ctx = backend_context(cfg, &node_name(cfg), &NodeFacts::default(), &cfg.mode, metrics);
    factory.init_only(&ctx).await.map_err(|e| {
        DaemonError::Startup(format!("proxy mode {}: privileged settings: {}", cfg.mode, ErrorChain(&e)))
    })?;
    info!(mode = %cfg.mode, "--init-only: conntrack and the mode's sysctls applied; run switchyard again with only CAP_NET_ADMIN");
    Ok(())
}

/// Runs the proxy until a signal. Returns Ok on a clean stop.
pub async fn run(cfg: Config, registry: Registry, log: LogHandle) -> Result<(), DaemonError> {
    // Signals are caught from the start: a SIGTERM during start-up is a clean stop too.
    let (_stop_tx, stop_rx) = shutdown_signal();
    let node = node_name(&cfg);
    if let Some(reason) = &cfg.unavailable {
        return Err(DaemonError::Unavailable { mode: cfg.mode.clone(), reason: reason.clone() });
    }
    let factory: Arc<dyn BackendFactory> =
        registry.get(&cfg.mode).map_err(|e| DaemonError::Config(e.to_string()))?.clone();

    // 1. Source and context.
    let source = prepare_source(&cfg, &node).await?;
    let metrics_registry = Arc::new(Mutex::new(prometheus_client::registry::Registry::default()));
    let facts = node_facts(&cfg, &source, &node).await?;
    let ctx = backend_context(&cfg, &node, &facts, &cfg.mode, metrics_registry.clone());
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

    // 3. kube-proxy's process settings, then the ports.
    apply_oom_score_adj(cfg.oom_score_adj);
    apply_conntrack_off_thread(&cfg).await?;
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

    // 5. Run.
    let health = ProxyHealth::new(cfg.sync_period * 2);
    let (proxy_metrics, daemon_metrics) = {
        let mut reg = metrics_registry.lock().unwrap_or_else(|e| e.into_inner());
        if let PreparedSource::Kube(k) = &source {
            k.rest_metrics().register(&mut reg);
        }
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
            let k = (*k).with_status(health.clone());
            tasks.spawn(async move { k.run(sink.clone(), wait_for(stop)).await });
        }
    }

    let admin_state = AdminState {
        proxier: proxier.clone(),
        health: health.clone(),
        registry: metrics_registry.clone(),
        metrics: daemon_metrics.clone(),
        log,
        config: Arc::new(cfg.kube_proxy.clone()),
        reload: reload_tx,
        debug_handlers: cfg.enable_debug_handlers,
        heavy: AdminState::heavy_permits(),
    };
    if let Some(l) = health_listener {
        info!(address = ?cfg.healthz_bind_address, "serving /healthz, /livez, /readyz");
        let router = admin::health_router(admin_state.clone());
        tasks.spawn(admin::serve(l, router, wait_for(stop_rx.clone())));
    }
    if let Some(l) = metrics_listener {
        if cfg.enable_debug_handlers {
            let paths = admin::DEBUG_PATHS.join(", ");
            if cfg.metrics_bind_address.is_some_and(|a| a.ip().is_loopback()) {
                info!(address = ?cfg.metrics_bind_address, debug_handlers = %paths, "serving /metrics and the debug handlers");
            } else {
                // Anyone who reaches that address can read the state and change the log level.
                warn!(address = ?cfg.metrics_bind_address, debug_handlers = %paths, "serving the debug handlers on a non-loopback address, without authentication");
            }
        } else {
            info!(
                address = ?cfg.metrics_bind_address,
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
        // Lifecycle: the first successful sync; then, when asked, kube-proxy's
        // leftovers go. Not before: until our rules are in, kube-proxy's are
        // what serves the node's connections (the migration test's point).
        let mut synced = proxier.subscribe();
        let mut stop = stop_rx.clone();
        let leftovers =
            cfg.remove_kube_proxy_leftovers.then(|| kube_proxy_leftovers_options(&cfg, cfg.mode != backend_ipvs::MODE));
        tasks.spawn(async move {
            tokio::select! {
                r = synced.wait_for(|s| s.syncs > 0) => if let Ok(s) = r {
                    info!(services = s.snapshot.as_ref().map_or(0, |s| s.len()), "first sync done; ready");
                } else {
                    return;
                },
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Some(opts) = leftovers {
                // A failure is logged; the proxy keeps serving (the leftovers
                // sit behind our rules) and `--cleanup` can be run again.
                let _ = tokio::task::spawn_blocking(move || crate::kube_proxy_leftovers::remove_and_log(&opts)).await;
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
