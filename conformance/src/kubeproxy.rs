//! Upstream kube-proxy as a conformance backend: the reference column.
//!
//! `--binary-backend kube-proxy-iptables` (or `-nftables`, `-ipvs`) runs the
//! reference kube-proxy (`./x reference`) inside node1 against the lab's real
//! API server ([`ApiLab`], reached through its relay), with a v1alpha1
//! `KubeProxyConfiguration` written per scenario:
//!
//! - `conntrack.maxPerCore: 0`, `min: 0` and zero timeouts, so kube-proxy
//!   leaves every conntrack sysctl alone: `nf_conntrack_max` and the module's
//!   `hashsize` belong to the whole machine, not to node1 (a test checks the
//!   machine's values are untouched);
//! - `oomScoreAdj: 0` (kube-proxy would otherwise make itself the last process
//!   the OOM killer picks on a shared machine);
//! - the scenario's `clusterCIDR` (with `detectLocalMode: ClusterCIDR`),
//!   `masqueradeAll` and `nodePortAddresses` (nftables mode defaults to the
//!   primary address only; "every address" is written as `0.0.0.0/0, ::/0`);
//! - `minSyncPeriod: 50ms`, as switchyard gets with `--min-sync-period`;
//! - `hostnameOverride: node1`, the identity `system:kube-proxy`.
//!
//! Convergence is read from kube-proxy itself, from inside node1: its
//! `/healthz` lists, per IP family, when rules were last written; its
//! `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds` and
//! `kubeproxy_sync_proxy_rules_last_timestamp_seconds` say when a change was
//! queued and when a sync last finished. A start has converged when every
//! family has synced since the process started; an update when every family
//! that queued a change since the write has synced since. (A sync already
//! running when the change was queued can end after it without holding it;
//! the probes, retried within their bound, judge behaviour anyway.)
//!
//! After each scenario kube-proxy is stopped (SIGTERM) and `kube-proxy
//! --cleanup` runs inside node1; whatever it leaves (`KUBE-*` chains, its
//! nftables tables) fails the scenario, because the next one must start clean.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use proxy_core::{BackendContext, Capabilities, NetNamespace, ProgrammedState, ProxyEvent};
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::apisource::ApiLab;
use crate::driver::{Converged, Driver, DriverFactory};
use crate::error::{ConformanceError, Result};
use crate::patience::poll;
use crate::relay::http_get_in;
use crate::scenario::ObjectStore;

/// The label prefix of upstream kube-proxy backends (`kube-proxy-iptables`).
pub const LABEL_PREFIX: &str = "kube-proxy-";

/// The kube-proxy modes a `kube-proxy-*` backend can run.
pub const MODES: [&str; 3] = ["iptables", "nftables", "ipvs"];
/// kube-proxy's default health and metrics addresses, inside node1.
pub const HEALTHZ: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 10256);
pub const METRICS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 10249);
const LAST_SYNC: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";
const LAST_QUEUED: &str = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds";

/// Upstream kube-proxy in one of its modes, run inside node1.
#[derive(Clone, Debug)]
pub struct KubeProxyBinary {
    /// The kube-proxy binary (the reference build).
    pub binary: PathBuf,
    /// `iptables`, `nftables` or `ipvs`.
    pub mode: String,
    pub api: Arc<ApiLab>,
    /// Whether node1 has IPv6: kube-proxy then runs both families and both must sync.
    pub ipv6: bool,
    /// Extra command-line arguments (`-v=4`).
    pub extra_args: Vec<String>,
}

impl KubeProxyBinary {
    /// The backend for a `--binary-backend` name, when it names kube-proxy (`kube-proxy-MODE`).
    pub fn mode_of(name: &str) -> Option<&str> {
        name.strip_prefix(LABEL_PREFIX).filter(|m| MODES.contains(m))
    }
}

/// The `KubeProxyConfiguration` (v1alpha1) for one scenario.
pub fn configuration(mode: &str, ctx: &BackendContext, kubeconfig: &std::path::Path) -> Value {
    let cidrs: Vec<String> = ctx.masquerade.cluster_cidrs.iter().map(ToString::to_string).collect();
    let node_port_addresses =
        crate::driver::node_port_addresses(mode, &ctx.nodeport_addresses).map_or(Value::Null, |l| json!(l));
    // Only the chosen mode's section is read; the others are validated, so they get valid values too.
    let per_mode = json!({"minSyncPeriod": "50ms", "syncPeriod": "30s", "masqueradeAll": ctx.masquerade.all});
    json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "hostnameOverride": ctx.node_name,
        "mode": mode,
        "detectLocalMode": "ClusterCIDR",
        "clusterCIDR": cidrs.join(","),
        "nodePortAddresses": node_port_addresses,
        "healthzBindAddress": HEALTHZ.to_string(),
        "metricsBindAddress": METRICS.to_string(),
        // Never the machine's sysctls: zero means "leave it as it is".
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "tcpBeLiberal": false,
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
        "oomScoreAdj": 0,
        "iptables": per_mode,
        "nftables": per_mode,
        // IPVS mode reads masqueradeAll from the iptables section; its own has none (and decoding is strict).
        "ipvs": {"minSyncPeriod": "50ms", "syncPeriod": "30s"},
    })
}

impl DriverFactory for KubeProxyBinary {
    fn label(&self) -> String {
        format!("{LABEL_PREFIX}{}", self.mode)
    }

    fn driver(&self, ctx: BackendContext) -> Box<dyn Driver> {
        Box::new(KubeProxyDriver { spec: self.clone(), ctx, child: None, dir: None })
    }

    fn probe<'a>(&'a self, ctx: &'a BackendContext) -> futures::future::BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(async move {
            if !self.binary.is_file() {
                return Err(format!("no kube-proxy at {} (build it with ./x reference)", self.binary.display()));
            }
            let tool = match self.mode.as_str() {
                "nftables" => "nft",
                "ipvs" if !std::path::Path::new("/proc/net/ip_vs").exists() => {
                    return Err("this kernel has no IPVS (run it in the VM)".into());
                }
                _ => "iptables-restore",
            };
            let found = ctx
                .netns
                .tokio_command(tool)
                .map_err(|e| e.to_string())?
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            match found {
                Ok(s) if s.success() => Ok(()),
                _ => Err(format!("kube-proxy's {} mode needs `{tool}`", self.mode)),
            }
        })
    }
}

/// One kube-proxy process in node1.
#[derive(Debug)]
pub struct KubeProxyDriver {
    spec: KubeProxyBinary,
    ctx: BackendContext,
    child: Option<tokio::process::Child>,
    dir: Option<PathBuf>,
}

/// What kube-proxy says about its syncs, per IP family (`IPv4`, `IPv6`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncTimes {
    /// When each family's rules were last written (Unix seconds).
    pub last_sync: BTreeMap<String, f64>,
    /// When each family last queued a change (Unix seconds).
    pub last_queued: BTreeMap<String, f64>,
}

/// Reads one gauge per `ip_family` label from a Prometheus exposition.
pub fn gauge_by_family(metrics: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        let family = labels
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix("ip_family="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        if let Ok(v) = value.trim().parse::<f64>() {
            out.insert(family, v);
        }
    }
    out
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl KubeProxyDriver {
    fn err(&self, message: impl Into<String>) -> ConformanceError {
        ConformanceError::Driver { driver: self.spec.label(), message: message.into() }
    }

    fn node1(&self) -> &NetNamespace {
        &self.ctx.netns
    }

    fn log_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("kube-proxy.log"))
    }

    fn log_tail(&self) -> String {
        let text = self.log_path().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The families kube-proxy must sync: IPv4, and IPv6 when node1 has it.
    fn families(&self) -> Vec<&'static str> {
        if self.spec.ipv6 { vec!["IPv4", "IPv6"] } else { vec!["IPv4"] }
    }

    /// kube-proxy's sync timestamps, from its /metrics inside node1.
    pub async fn sync_times(&self) -> Result<SyncTimes> {
        let (code, body) =
            http_get_in(self.node1(), METRICS, "/metrics").await.map_err(|e| self.err(format!("GET /metrics: {e}")))?;
        if code != 200 {
            return Err(self.err(format!("GET /metrics: {code}")));
        }
        Ok(SyncTimes { last_sync: gauge_by_family(&body, LAST_SYNC), last_queued: gauge_by_family(&body, LAST_QUEUED) })
    }

    /// kube-proxy's /healthz inside node1: the code and the JSON body.
    pub async fn healthz(&self) -> Result<(u16, Value)> {
        let (code, body) =
            http_get_in(self.node1(), HEALTHZ, "/healthz").await.map_err(|e| self.err(format!("GET /healthz: {e}")))?;
        Ok((code, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())?;
        Some(format!("kube-proxy exited ({status}); its log ends with:\n{}", self.log_tail()))
    }

    async fn spawn(&mut self, objects: &ObjectStore) -> Result<()> {
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "swy-kube-proxy-{}-{}",
                    std::process::id(),
                    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
                ));
                std::fs::create_dir_all(&d).map_err(|e| self.err(format!("creating {}: {e}", d.display())))?;
                self.dir = Some(d.clone());
                d
            }
        };
        self.spec.api.objects().replace_all(objects).await?;
        let config = configuration(&self.spec.mode, &self.ctx, self.spec.api.kube_proxy_kubeconfig());
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, config.to_string())
            .map_err(|e| self.err(format!("writing {}: {e}", config_path.display())))?;
        let log_path = dir.join("kube-proxy.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| self.err(format!("opening {}: {e}", log_path.display())))?;
        let log2 = log.try_clone().map_err(|e| self.err(e.to_string()))?;
        let mut args = vec![format!("--config={}", config_path.display())];
        args.extend(self.spec.extra_args.iter().cloned());
        debug!(binary = %self.spec.binary.display(), ?args, "starting kube-proxy");
        let child = self
            .node1()
            .tokio_command(&self.spec.binary)
            .map_err(|e| self.err(format!("entering node1: {e}")))?
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.err(format!("starting {}: {e}", self.spec.binary.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until every family has written its rules since `since` (Unix seconds).
    async fn wait_synced_since(&mut self, since: f64, bound: Duration) -> Result<()> {
        let families = self.families();
        let deadline = Instant::now() + bound;
        loop {
            if let Some(exit) = self.exited() {
                return Err(self.err(exit));
            }
            if let Ok(times) = self.sync_times().await
                && families.iter().all(|f| times.last_sync.get(*f).is_some_and(|t| *t >= since))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let times = self.sync_times().await.ok();
                let health = self.healthz().await.ok();
                return Err(self.err(format!(
                    "no sync of {families:?} within {} ms (sync times {times:?}, /healthz {health:?}); its log ends with:\n{}",
                    bound.as_millis(),
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// After a write at `since`: every family that queued a change since then
    /// has synced since it queued. Best effort within `bound`.
    async fn settle(&mut self, since: f64, bound: Duration) {
        let waited = poll(bound, || async {
            let t = self.sync_times().await.map_err(|_| ())?;
            let queued: Vec<(&String, &f64)> = t.last_queued.iter().filter(|(_, q)| **q >= since).collect();
            let done = !queued.is_empty() && queued.iter().all(|(f, q)| t.last_sync.get(*f).is_some_and(|s| s >= *q));
            if done { Ok(()) } else { Err(()) }
        })
        .await;
        if waited.result.is_err() {
            debug!(driver = %self.spec.label(), "no sync seen for the change; probes will judge");
        }
    }

    async fn kill(&mut self) {
        crate::driver::terminate(self.child.take(), Duration::from_secs(10)).await;
    }

    /// `KUBE-*` chains and kube-proxy's nftables tables left in node1.
    pub async fn leftovers(&self) -> Result<Vec<String>> {
        leftovers(self.node1()).await.map_err(|e| self.err(e))
    }
}

/// Chains kube-proxy creates and `kube-proxy --cleanup` keeps (kubelet's).
pub const KUBELET_CHAINS: &[&str] = &["KUBE-FIREWALL"];

/// Removes [`KUBELET_CHAINS`] from node1's filter table (both families): the
/// jumps from INPUT and OUTPUT, then the chain (`iptables -D INPUT -j
/// KUBE-FIREWALL; iptables -F KUBE-FIREWALL; iptables -X KUBE-FIREWALL`).
pub async fn remove_kubelet_firewall(ns: &NetNamespace) {
    for tool in ["iptables", "ip6tables"] {
        for chain in KUBELET_CHAINS {
            let mut steps: Vec<Vec<&str>> = ["INPUT", "OUTPUT"].iter().map(|h| vec!["-D", *h, "-j", *chain]).collect();
            steps.push(vec!["-F", *chain]);
            steps.push(vec!["-X", *chain]);
            for step in steps {
                if let Ok(mut cmd) = ns.tokio_command(tool) {
                    // Absent already is fine: every step is best effort.
                    let _ = cmd
                        .args(["-w", "-t", "filter"])
                        .args(&step)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .await;
                }
            }
        }
    }
}

/// What kube-proxy leaves in a namespace: `KUBE-*` chains (iptables, both
/// families) and its nftables tables (`kube-proxy` in ip and ip6).
pub async fn leftovers(ns: &NetNamespace) -> std::result::Result<Vec<String>, String> {
    let mut found = Vec::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        let out = ns.tokio_command(tool).map_err(|e| e.to_string())?.stdin(Stdio::null()).output().await;
        if let Ok(out) = out {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(chain) = line.strip_prefix(':').and_then(|l| l.split_whitespace().next())
                    && chain.starts_with("KUBE-")
                {
                    found.push(format!("{tool}: chain {chain}"));
                }
            }
        }
    }
    let out = ns
        .tokio_command("nft")
        .map_err(|e| e.to_string())?
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .output()
        .await;
    if let Ok(out) = out {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.trim_end().ends_with(" kube-proxy") {
                found.push(format!("nft: {}", line.trim()));
            }
        }
    }
    Ok(found)
}

#[async_trait]
impl Driver for KubeProxyDriver {
    fn label(&self) -> String {
        self.spec.label()
    }

    fn capabilities(&self) -> Option<Capabilities> {
        None
    }

    async fn start(
        &mut self,
        objects: &ObjectStore,
        _expected: &ProgrammedState,
        bound: Duration,
    ) -> Result<Converged> {
        let start = Instant::now();
        let since = unix_now();
        self.spawn(objects).await?;
        self.wait_synced_since(since, bound).await?;
        Ok(Converged { elapsed: start.elapsed() })
    }

    async fn apply(
        &mut self,
        events: Vec<ProxyEvent>,
        _objects: &ObjectStore,
        _expected: &ProgrammedState,
        bound: Duration,
    ) -> Result<Converged> {
        let start = Instant::now();
        let since = unix_now();
        if self.spec.api.objects().push(&events).await? {
            self.settle(since, bound).await;
        }
        if let Some(exit) = self.exited() {
            return Err(self.err(exit));
        }
        Ok(Converged { elapsed: start.elapsed() })
    }

    async fn inspect(&self) -> Result<Option<ProgrammedState>> {
        Ok(None)
    }

    async fn restart(
        &mut self,
        objects: &ObjectStore,
        _expected: &ProgrammedState,
        bound: Duration,
    ) -> Result<Converged> {
        let start = Instant::now();
        self.kill().await;
        let since = unix_now();
        self.spawn(objects).await?;
        self.wait_synced_since(since, bound).await?;
        Ok(Converged { elapsed: start.elapsed() })
    }

    async fn stop(&mut self) -> Result<()> {
        self.kill().await;
        let out = self
            .node1()
            .tokio_command(&self.spec.binary)
            .map_err(|e| self.err(format!("entering node1: {e}")))?
            .arg("--cleanup")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| self.err(format!("running kube-proxy --cleanup: {e}")))?;
        // Upstream leaves KUBE-FIREWALL on purpose (it duplicates a chain
        // kubelets used to own; `iptablesKubeletJumpChains` in its iptables
        // proxier): the lab removes it, so the next scenario starts clean.
        remove_kubelet_firewall(self.node1()).await;
        let left = self.leftovers().await?;
        self.spec.api.objects().clear().await?;
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if !out.status.success() {
            warn!(status = %out.status, stderr = %String::from_utf8_lossy(&out.stderr), "kube-proxy --cleanup failed");
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(self.err(format!("kube-proxy --cleanup ({}) left {}: {}", out.status, left.len(), left.join(", "))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_core::MasqueradeConfig;

    #[test]
    fn gauges_are_read_per_family() {
        let text = "# HELP x\n\
            kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1.7649636925398836e+09\n\
            kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv6\"} 1.76496369e+09\n\
            kubeproxy_sync_proxy_rules_last_timestamp_seconds_other 3\n\
            kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 12\n";
        let g = gauge_by_family(text, LAST_SYNC);
        assert_eq!(g.len(), 2, "{g:?}");
        assert!((g["IPv4"] - 1_764_963_692.539_883_6).abs() < 1e-6);
        assert_eq!(gauge_by_family(text, LAST_QUEUED), BTreeMap::from([(String::new(), 12.0)]));
    }

    #[test]
    fn the_configuration_keeps_kube_proxy_off_the_machines_sysctls() {
        let mut ctx = BackendContext::new("node1", NetNamespace::current());
        ctx.masquerade = MasqueradeConfig { all: true, cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")] };
        let c = configuration("nftables", &ctx, std::path::Path::new("/k"));
        assert_eq!(c["conntrack"]["maxPerCore"], 0);
        assert_eq!(c["conntrack"]["tcpEstablishedTimeout"], "0s");
        assert_eq!(c["conntrack"]["udpTimeout"], "0s");
        assert_eq!(c["clusterCIDR"], "10.244.0.0/16");
        assert_eq!(c["nodePortAddresses"], json!(["0.0.0.0/0", "::/0"]));
        assert_eq!(c["nftables"]["masqueradeAll"], true);
        assert_eq!(c["hostnameOverride"], "node1");
        assert_eq!(configuration("iptables", &ctx, std::path::Path::new("/k"))["nodePortAddresses"], Value::Null);
        assert_eq!(KubeProxyBinary::mode_of("kube-proxy-nftables"), Some("nftables"));
        assert_eq!(KubeProxyBinary::mode_of("kube-proxy-bogus"), None);
        assert_eq!(KubeProxyBinary::mode_of("iptables"), None);
    }
}
