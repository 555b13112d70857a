//! `switchyard inspect`: what the kernel holds, read back by the backend's
//! `inspect()`, and where it differs from the desired state.
//!
//! The desired state is computed the way the daemon computes it: the source
//! (manifests, or the API server's initial lists) fed through the tracker and
//! planner with the same configuration. Exit status: 0 when the kernel
//! matches (or `--no-diff`), 1 when it differs.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxy_core::{
    Capabilities, ChangeTracker, DataplaneError, ErrorChain, PlannerConfig, ProgrammedFrontend, ProgrammedState,
    ProxyEvent, Registry, StateDifference, TrackerConfig,
};
use serde::Serialize;

use crate::DaemonError;
use crate::cli::{InspectArgs, OutputFormat};
use crate::config::{Config, parse_duration};
use crate::daemon::{NodeFacts, PreparedSource, backend_context, node_facts, node_name, prepare_source};
use crate::source::EventSink;
use crate::source::file;

/// What `inspect` found.
#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    pub mode: String,
    /// What the dataplane implements as configured (as `/healthz` lists them).
    pub capabilities: Capabilities,
    /// What this configuration leaves unserved, in the backend's words
    /// (ebpf without `cgroupPath`: node processes reach no ClusterIP).
    pub limitations: Vec<String>,
    pub programmed: ProgrammedState,
    /// `None` with `--no-diff`, or when the desired state cannot be known.
    pub differences: Option<Vec<StateDifference>>,
    /// Why the desired state cannot be known: the manifests' problems. The
    /// daemon programs nothing from such manifests either, so a diff
    /// against what they hold would list differences that are not there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub manifest_problems: Vec<String>,
}

impl InspectReport {
    pub fn matches(&self) -> bool {
        self.manifest_problems.is_empty() && self.differences.as_ref().is_none_or(Vec::is_empty)
    }
}

/// The desired state, or why it cannot be known.
enum Desired {
    State(ProgrammedState),
    Incomplete(Vec<String>),
}

/// Reads the kernel and, unless told not to, the desired state.
pub async fn inspect(args: &InspectArgs, cfg: &Config, registry: &Registry) -> Result<InspectReport, DaemonError> {
    let node = node_name(cfg);
    let factory = registry.get(&cfg.mode).map_err(|e| DaemonError::Config(e.to_string()))?.clone();
    let metrics = Arc::new(Mutex::new(prometheus_client::registry::Registry::default()));
    // Node IPs (and so the families inspected) as the daemon finds them:
    // `--bind-address`, else this node's Node from the source. With
    // `--no-diff` an unusable source is no error: the bind address decides.
    let source =
        if args.no_diff { prepare_source(cfg, &node).await.ok() } else { Some(prepare_source(cfg, &node).await?) };
    let facts = match &source {
        Some(source) => node_facts(cfg, source, &node).await?,
        None => NodeFacts { ips: cfg.bind_address.into_iter().collect(), pod_cidrs: Vec::new() },
    };
    let ctx = backend_context(cfg, &node, &facts, &cfg.mode, metrics);
    let unavailable = |e: DataplaneError| match e {
        DataplaneError::Unavailable { mode, reason } => DaemonError::Unavailable { mode, reason },
        other => DaemonError::Startup(ErrorChain(&other).to_string()),
    };
    factory.probe(&ctx).await.map_err(unavailable)?;
    let dp = factory.build(&ctx).await.map_err(unavailable)?;
    let programmed =
        dp.inspect().await.map_err(|e| DaemonError::Runtime(format!("reading the kernel: {}", ErrorChain(&e))))?;
    let (differences, manifest_problems) = match source.filter(|_| !args.no_diff) {
        None => (None, Vec::new()),
        Some(source) => {
            let timeout = parse_duration(&args.source_timeout)
                .map_err(|e| DaemonError::Config(format!("--source-timeout: {e}")))?;
            match desired_state(cfg, source, &node, ctx.families, ctx.masquerade.clone(), timeout).await? {
                Desired::State(desired) => (Some(desired.diff(&programmed)), Vec::new()),
                Desired::Incomplete(problems) => (None, problems),
            }
        }
    };
    Ok(InspectReport {
        mode: cfg.mode.clone(),
        capabilities: dp.capabilities(),
        limitations: dp.limitations(),
        programmed,
        differences,
        manifest_problems,
    })
}

async fn desired_state(
    cfg: &Config,
    source: PreparedSource,
    node: &str,
    families: proxy_core::FamilySet,
    masquerade: proxy_core::MasqueradeConfig,
    timeout: Duration,
) -> Result<Desired, DaemonError> {
    let planner = PlannerConfig { node_name: node.into(), families, masquerade };
    let tracker = Arc::new(Mutex::new(ChangeTracker::new(TrackerConfig {
        planner,
        service_proxy_name: cfg.service_proxy_name.clone(),
        wait_for_node: true,
    })));
    let sink: EventSink = {
        let t = tracker.clone();
        Arc::new(move |ev: ProxyEvent| {
            t.lock().unwrap_or_else(|e| e.into_inner()).apply(ev);
        })
    };
    match source {
        PreparedSource::File(path) => {
            let (manifests, errors) = file::read_once(&path);
            if !errors.is_empty() {
                return Ok(Desired::Incomplete(errors.iter().map(ToString::to_string).collect()));
            }
            for ev in manifests.events() {
                sink(ev);
            }
        }
        PreparedSource::Kube(k) => {
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn((*k).run(sink, async move {
                let _ = stop_rx.await;
            }));
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if tracker.lock().unwrap_or_else(|e| e.into_inner()).is_synced() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    let _ = stop_tx.send(());
                    return Err(DaemonError::Runtime("the API server's initial lists did not complete in time".into()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = stop_tx.send(());
            let _ = task.await;
        }
    }
    let snapshot = tracker.lock().unwrap_or_else(|e| e.into_inner()).snapshot();
    Ok(Desired::State(snapshot.expected_state()))
}

fn endpoints_text(p: &ProgrammedFrontend) -> String {
    if p.endpoints.is_empty() {
        return match p.empty_verdict {
            Some(v) => format!("({v:?})").to_lowercase(),
            None => "(none)".into(),
        };
    }
    let mut s = p.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    if let Some(c) = &p.cluster_endpoints {
        let _ = write!(s, "  [from pods/node: {}]", c.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    }
    if let Some(t) = p.affinity_timeout_seconds {
        let _ = write!(s, "  [affinity {t}s]");
    }
    s
}

/// Renders a report as text or JSON.
pub fn render(report: &InspectReport, format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => serde_json::to_string_pretty(report).unwrap_or_default() + "\n",
        OutputFormat::Table => {
            let rows: Vec<(String, String, String)> = report
                .programmed
                .frontends
                .iter()
                .map(|(f, p)| (f.to_string(), p.service.clone().unwrap_or_else(|| "-".into()), endpoints_text(p)))
                .collect();
            let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max("FRONTEND".len());
            let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max("SERVICE".len());
            let mut out = format!("{:w0$}  {:w1$}  ENDPOINTS\n", "FRONTEND", "SERVICE");
            for (a, b, c) in rows {
                let _ = writeln!(out, "{a:w0$}  {b:w1$}  {c}");
            }
            let _ = writeln!(out, "\n{} frontends programmed by {}.", report.programmed.frontends.len(), report.mode);
            let names = |caps: &mut dyn Iterator<Item = proxy_core::Capability>| {
                caps.map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
            };
            let _ = writeln!(out, "Capabilities: {}.", names(&mut report.capabilities.0.iter().copied()));
            let all = Capabilities::all();
            let missing = report.capabilities.missing(&all.0);
            if !missing.is_empty() {
                let _ = writeln!(out, "Not implemented as configured: {}.", names(&mut missing.into_iter()));
            }
            for limitation in &report.limitations {
                let _ = writeln!(out, "Limitation: {limitation}.");
            }
            if !report.manifest_problems.is_empty() {
                let _ = writeln!(
                    out,
                    "The desired state is unknown: the manifests have {} problems (the daemon programs nothing from them either):",
                    report.manifest_problems.len()
                );
                for p in &report.manifest_problems {
                    let _ = writeln!(out, "  - {p}");
                }
            }
            match &report.differences {
                None => {}
                Some(d) if d.is_empty() => out.push_str("The kernel matches the desired state.\n"),
                Some(d) => {
                    let _ = writeln!(out, "The kernel differs from the desired state in {} places:", d.len());
                    for diff in d {
                        let _ = writeln!(out, "  - {diff}");
                    }
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_core::Capability;

    #[test]
    fn the_table_names_capabilities_and_limitations() {
        let report = InspectReport {
            mode: "ebpf".into(),
            capabilities: Capabilities::new([Capability::Tcp, Capability::ClusterIP]),
            limitations: vec!["processes on the node cannot reach ClusterIPs".into()],
            programmed: ProgrammedState::default(),
            differences: Some(vec![StateDifference::Unattached { hook: "tc ingress on eth0".into() }]),
            manifest_problems: Vec::new(),
        };
        let text = render(&report, OutputFormat::Table);
        assert!(text.contains("Capabilities: Tcp, ClusterIP."), "{text}");
        assert!(text.contains("Not implemented as configured: ") && text.contains("HostNetworkClients"), "{text}");
        assert!(text.contains("Limitation: processes on the node cannot reach ClusterIPs."), "{text}");
        assert!(text.contains("tc ingress on eth0: the datapath is not attached there"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render(&report, OutputFormat::Json)).expect("json");
        assert_eq!(json["limitations"][0], "processes on the node cannot reach ClusterIPs");
        assert!(json["capabilities"].as_array().is_some_and(|c| c.len() == 2), "{json}");
        assert!(!report.matches(), "a detached hook is a difference");
    }
}
