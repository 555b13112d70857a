//! Rows against the real thing (`--real`): upstream kube-proxy (the `./x
//! reference` build, iptables and nftables modes) and switchyard's iptables
//! mode, each reading a real etcd + kube-apiserver (`conformance::apiserver`)
//! through a relay in the node namespace (`conformance::relay`: the lab never
//! routes to the root namespace, where the API server listens on loopback).
//!
//! Measured as the switchyard rows are, where the real thing allows:
//!
//! - **cold start**: N Services and their EndpointSlices already in the API
//!   server (written straight into etcd in transactions: through the API,
//!   10,000 of each take minutes on two cores), process spawn → first
//!   connection to the last-created Service answered; "kernel" is spawn →
//!   the first sync the proxy reports (switchyard: its `synced` log line;
//!   kube-proxy: `kubeproxy_sync_proxy_rules_last_timestamp_seconds` moving
//!   past the spawn, polled from its /metrics every 10 ms);
//! - **one endpoint**: the last Service's EndpointSlice applied through the
//!   API (server-side apply as the admin) → kernel (as above, a sync after
//!   the write) and → first connection answered by the new endpoint;
//! - **peak RSS and CPU** of the proxy process (and the programs it ran,
//!   `iptables-restore`, `nft`) from spawn to the end of its first sync.
//!
//! Every rep uses a fresh lab (an empty kernel) and the same control plane.
//! Churn is not measured here (the fake API server's rows have it).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use conformance::apiserver::{ControlPlane, ControlPlaneConfig, ReferenceBinaries};
use conformance::relay::{Relay, http_get_in};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use proxy_core::{BackendContext, NetNamespace};
use serde_json::{Value, json};

use crate::daemon::{Daemon, DaemonSpec, proc_footprint};
use crate::lab::{CLUSTER_CIDR, LEFTOVERS, Lab};
use crate::measure::{ChangeSeries, Settings, data_plane, last, us_since, watch_for};
use crate::objects::{self, NAMESPACE, NODE_NAME, Svc};
use crate::report::{Footprint, Kind, Row};
use crate::stats::Samples;

/// What runs against the API server.
#[derive(Clone, Copy, Debug)]
pub enum Proxy {
    /// Upstream kube-proxy in a mode (`iptables`, `nftables`).
    KubeProxy(&'static str),
    /// The switchyard binary in iptables mode.
    Switchyard,
}

impl Proxy {
    pub fn label(self) -> String {
        match self {
            Proxy::KubeProxy(mode) => format!("kube-proxy {mode} (real)"),
            Proxy::Switchyard => "switchyard iptables (real API server)".into(),
        }
    }
}

/// A proxy process in the node namespace.
enum Running {
    KubeProxy { child: Child, spawned: SystemTime, ns: NetNamespace },
    Switchyard(Daemon),
}

impl Running {
    fn pid(&self) -> i32 {
        match self {
            Running::KubeProxy { child, .. } => child.id() as i32,
            Running::Switchyard(d) => d.pid,
        }
    }

    fn spawned(&self) -> SystemTime {
        match self {
            Running::KubeProxy { spawned, .. } => *spawned,
            Running::Switchyard(d) => d.spawned,
        }
    }

    fn stop(self) {
        match self {
            Running::KubeProxy { mut child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
                LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner()).pids.remove(&(child.id() as i32));
            }
            Running::Switchyard(d) => d.stop(),
        }
    }
}

/// kube-proxy's last sync (Unix seconds) from its /metrics: the earliest over
/// its IP families (a cold start is done when every family has synced), or
/// the latest (a change to IPv4 objects is synced by the IPv4 proxier only).
async fn kube_proxy_last_sync(ns: &NetNamespace, every_family: bool) -> Option<f64> {
    let (code, body) = http_get_in(ns, conformance::kubeproxy::METRICS, "/metrics").await.ok()?;
    if code != 200 {
        return None;
    }
    let syncs = conformance::kubeproxy::gauge_by_family(&body, "kubeproxy_sync_proxy_rules_last_timestamp_seconds");
    syncs.values().copied().reduce(if every_family { f64::min } else { f64::max })
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn from_unix(s: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s.max(0.0))
}

/// Waits for a sync after `since` (`generation` 0: the first, of every family):
/// its time, or `None` after `timeout`.
fn wait_sync_after(
    rt: &tokio::runtime::Runtime,
    p: &Running,
    since: SystemTime,
    generation: u64,
    timeout: Duration,
) -> Option<SystemTime> {
    match p {
        Running::Switchyard(d) => d.wait_sync(generation, timeout).map(|e| e.at),
        Running::KubeProxy { ns, .. } => {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Some(t) = rt.block_on(kube_proxy_last_sync(ns, generation == 0)).filter(|t| *t >= unix(since)) {
                    return Some(from_unix(t));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        }
    }
}

/// An object as kube-apiserver stores it in etcd (`--storage-media-type=application/json`):
/// what the API would have added on create (uid, creation time) and the defaults it would have filled.
fn stored(mut v: Value, uid: usize) -> Value {
    v["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{uid:012}"));
    v["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    if v["kind"] == "Service" {
        let spec = &mut v["spec"];
        let ip = spec["clusterIP"].clone();
        spec["clusterIPs"] = json!([ip]);
        spec["ipFamilies"] = json!(["IPv4"]);
        spec["ipFamilyPolicy"] = json!("SingleStack");
        for (field, default) in
            [("type", "ClusterIP"), ("sessionAffinity", "None"), ("internalTrafficPolicy", "Cluster")]
        {
            if spec[field].is_null() {
                spec[field] = json!(default);
            }
        }
        if spec["type"] == "NodePort" && spec["externalTrafficPolicy"].is_null() {
            spec["externalTrafficPolicy"] = json!("Cluster");
        }
        if let Some(ports) = spec["ports"].as_array_mut() {
            for p in ports {
                if p["targetPort"].is_null() {
                    p["targetPort"] = json!(crate::lab::POD_PORT);
                }
            }
        }
        v["status"] = json!({"loadBalancer": {}});
    }
    v
}

/// Puts the Services and slices into etcd and waits until the API server serves all of them.
async fn load(cp: &ControlPlane, svcs: &[Svc]) -> Result<(), String> {
    cp.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
        .await
        .map_err(|e| e.to_string())?;
    cp.apply(&objects::node_json()).await.map_err(|e| e.to_string())?;
    let mut entries = Vec::with_capacity(svcs.len() * 2);
    for (i, s) in svcs.iter().enumerate() {
        let slice = objects::slice_json(s);
        let slice_name = slice["metadata"]["name"].as_str().unwrap_or_default().to_string();
        entries.push((
            format!("/registry/services/specs/{NAMESPACE}/{}", s.name),
            stored(objects::service_json(s), 2 * i),
        ));
        entries.push((format!("/registry/endpointslices/{NAMESPACE}/{slice_name}"), stored(slice, 2 * i + 1)));
    }
    cp.etcd_put_many(&entries).await.map_err(|e| e.to_string())?;
    // The API server's watch cache catches up asynchronously; wait while it makes progress.
    let services: Api<Service> = Api::namespaced(cp.admin_client(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(cp.admin_client(), NAMESPACE);
    let mut last = (usize::MAX, usize::MAX);
    let mut deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = services.list_metadata(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
        let b = slices.list_metadata(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
        if a == svcs.len() && b == svcs.len() {
            return Ok(());
        }
        if (a, b) != last {
            last = (a, b);
            deadline = Instant::now() + Duration::from_secs(60);
        }
        if Instant::now() > deadline {
            return Err(format!("the API server serves {a} Services and {b} slices of {}", svcs.len()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts upstream kube-proxy in the node namespace with a KubeProxyConfiguration
/// (conformance's, with the bench's minimum sync period).
fn start_kube_proxy(
    bins: &ReferenceBinaries,
    mode: &'static str,
    lab: &Lab,
    kubeconfig: &Path,
    s: &Settings,
) -> Result<Running, String> {
    let ns = lab.netns("node");
    let mut ctx = BackendContext::new(NODE_NAME, ns.clone());
    ctx.masquerade.cluster_cidrs = vec![CLUSTER_CIDR.parse().map_err(|e| format!("{CLUSTER_CIDR}: {e}"))?];
    let mut config = conformance::kubeproxy::configuration(mode, &ctx, kubeconfig);
    for section in ["iptables", "nftables"] {
        config[section]["minSyncPeriod"] = json!(s.min_sync_period);
    }
    let dir = s.workdir.join(lab.ns_name("kube-proxy"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string()).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let log = std::fs::File::create(dir.join("kube-proxy.log")).map_err(|e| e.to_string())?;
    let fd = std::fs::File::open(PathBuf::from("/run/netns").join(lab.ns_name("node"))).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bins.kube_proxy());
    cmd.arg(format!("--config={}", config_path.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    crate::lab::spawn_inside(&mut cmd, fd, s.cpus.dataplane);
    let spawned = SystemTime::now();
    let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", bins.kube_proxy().display()))?;
    LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner()).pids.insert(child.id() as i32);
    Ok(Running::KubeProxy { child, spawned, ns })
}

/// One row: `proxy` against a real API server holding `n` Services.
pub fn row(proxy: Proxy, switchyard: &Path, n: usize, s: &Settings) -> Row {
    let eps = s.endpoints_for(n);
    let mut row = Row::new(&proxy.label(), Kind::Real, n, eps);
    if let Err(e) = measure(proxy, switchyard, n, eps, s, &mut row) {
        row.errors.push(e);
    }
    row
}

fn measure(proxy: Proxy, switchyard: &Path, n: usize, eps: usize, s: &Settings, row: &mut Row) -> Result<(), String> {
    let bins = ReferenceBinaries::locate().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    // Started from this thread, which lives until the control plane is dropped (PR_SET_PDEATHSIG).
    let cp = rt.block_on(ControlPlane::start(&bins, &ControlPlaneConfig::default())).map_err(|e| e.to_string())?;
    rt.block_on(cp.apply_yaml(conformance::apisource::RBAC)).map_err(|e| e.to_string())?;
    let svcs = objects::all(n, eps);
    rt.block_on(load(&cp, &svcs))?;
    let target: SocketAddr =
        cp.server().trim_start_matches("https://").parse().map_err(|e| format!("{}: {e}", cp.server()))?;
    let timeout = Duration::from_secs_f64(s.cold_timeout_s);

    let (mut kernel, mut answer) = (Vec::new(), Vec::new());
    let mut running: Option<(Lab, Relay, Running)> = None;
    let mut load_footprint = None;
    for rep in 0..s.cold_reps.min(3) {
        if let Some((_, _, p)) = running.take() {
            p.stop();
        }
        let lab = Lab::create(s.cpus, false)?;
        let relay = rt.block_on(Relay::start(&lab.netns("node"), target)).map_err(|e| e.to_string())?;
        let server = format!("https://{}", relay.addr());
        let dir = s.workdir.join(lab.ns_name("kubeconfig"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let prober = watch_for(&lab, last(&svcs), None, timeout, s.cpus.client);
        let p = match proxy {
            Proxy::KubeProxy(mode) => {
                let kc = conformance::apisource::with_server(
                    cp.kube_proxy_kubeconfig(),
                    &server,
                    &dir.join("kp.kubeconfig"),
                )
                .map_err(|e| e.to_string())?;
                start_kube_proxy(&bins, mode, &lab, &kc, s)?
            }
            Proxy::Switchyard => {
                let sa = rt
                    .block_on(cp.service_account_kubeconfig("kube-system", "switchyard"))
                    .map_err(|e| e.to_string())?;
                let kc = conformance::apisource::with_server(&sa, &server, &dir.join("sy.kubeconfig"))
                    .map_err(|e| e.to_string())?;
                let spec = DaemonSpec {
                    binary: switchyard.to_path_buf(),
                    mode: "iptables".into(),
                    min_sync_period: s.min_sync_period.clone(),
                    section: None,
                    cpu: s.cpus.dataplane,
                };
                let ns_path = PathBuf::from("/run/netns").join(lab.ns_name("node"));
                Running::Switchyard(Daemon::start(&spec, &ns_path, &kc, &s.workdir)?)
            }
        };
        let synced = wait_sync_after(&rt, &p, p.spawned(), 0, timeout);
        let answered = prober.join().ok().flatten();
        let Some(at) = synced else {
            p.stop();
            return Err(format!("rep {rep}: no sync within {:.0} s", timeout.as_secs_f64()));
        };
        kernel.push(us_since(p.spawned(), at));
        match answered {
            Some(t) => answer.push(us_since(p.spawned(), t)),
            None => row.errors.push(format!("rep {rep}: the last Service never answered")),
        }
        load_footprint = proc_footprint(p.pid());
        running = Some((lab, relay, p));
        if kernel[0] > 20e6 {
            break; // slow starts: one sample is enough
        }
    }
    row.cold_kernel = Some(Samples::new(kernel));
    row.cold_answer = Some(Samples::new(answer));
    let Some((lab, relay, p)) = running else { return Ok(()) };
    data_plane(row, &lab, &svcs, s);

    if n >= 3 {
        let mut generation = match &p {
            Running::Switchyard(d) => d.synced_generation(),
            Running::KubeProxy { .. } => 0,
        };
        let mut changes = ChangeSeries::default();
        let start = Instant::now();
        for v in 1..=s.change_reps {
            if v > 3 && start.elapsed().as_secs_f64() > s.change_budget_s {
                break;
            }
            let new = objects::svc(n - 1, n, eps, v);
            let expect = Some(IpAddr::V4(new.endpoints[0]));
            let prober = watch_for(&lab, last(&svcs), expect, timeout, s.cpus.client);
            let t0 = SystemTime::now();
            if let Err(e) = rt.block_on(cp.apply(&objects::slice_json(&new))) {
                row.errors.push(format!("change {v}: {e}"));
                break;
            }
            generation += 1;
            let synced = wait_sync_after(&rt, &p, t0, generation, timeout);
            let answered = prober.join().ok().flatten();
            if !changes.record(row, v, t0, synced, answered, timeout) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        changes.finish(row);
    }
    let (rss_load, cpu_load) = load_footprint.map_or((f64::NAN, f64::NAN), |(r, own, ch)| (r, own + ch));
    let rss_after = proc_footprint(p.pid()).map_or(f64::NAN, |f| f.0);
    row.footprint = Some(Footprint { peak_rss_load_mib: rss_load, peak_rss_mib: rss_after, cpu_load_s: cpu_load });
    p.stop();
    drop(relay);
    drop(lab);
    drop(cp);
    Ok(())
}
