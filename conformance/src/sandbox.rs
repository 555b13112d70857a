//! The sandbox: a throwaway mini-cluster with live traffic, for `./x demo`.
//!
//! It builds the conformance [`Lab`] (two nodes, pods running echo servers,
//! clients inside and outside the cluster), writes sample manifests to a
//! directory, runs the real `switchyard` binary in node1 with the file
//! source, and shows every second which pod answered requests to a
//! ClusterIP and a NodePort and which source address the pod saw. A short
//! script then edits the manifests (scale up, an endpoint terminating,
//! externalTrafficPolicy Local, no endpoints) and the traffic shows switchyard
//! following each change; the manifests can also be edited by hand.
//!
//! With `check`, every scripted step also asserts what the traffic must
//! show, so the demo doubles as an end-to-end test of the daemon.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use proxy_core::{FamilySet, NodePortAddresses};

use crate::addresses;
use crate::agent::{AgentRequest, AgentResponse, EchoPorts, Outcome, Proto};
use crate::driver::ExternalBinary;
use crate::error::{ConformanceError, Result};
use crate::lab::{Lab, LabConfig};

/// Where pods listen, and the Service ports in front of them.
const POD_PORT: u16 = 8080;
const CLUSTER_IP: &str = "10.96.0.10";
const SERVICE_PORT: u16 = 80;
const NODE_PORT: u16 = 30080;

/// How the sandbox runs.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The `switchyard` binary.
    pub switchyard_bin: PathBuf,
    /// `--proxy-mode`.
    pub mode: String,
    /// Where the manifests go (a fresh temporary directory when `None`).
    pub manifests: Option<PathBuf>,
    /// Stop after the script (plus this long); `None` runs until Ctrl-C.
    pub linger: Option<Duration>,
    /// Seconds between scripted changes.
    pub step: Duration,
    /// Assert what each step must show; fail the run otherwise.
    pub check: bool,
    /// Extra arguments for `switchyard`.
    pub extra_args: Vec<String>,
}

/// One endpoint of the sample Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pod {
    name: &'static str,
    node: &'static str,
    ready: bool,
    terminating: bool,
}

const fn pod(name: &'static str, node: &'static str) -> Pod {
    Pod { name, node, ready: true, terminating: false }
}

/// The desired state at one step of the script.
#[derive(Clone, Debug)]
struct Step {
    title: &'static str,
    pods: Vec<Pod>,
    local: bool,
    /// What a client pod on node1 must reach through the ClusterIP.
    expect_cluster: Expect,
    /// What the external client must reach through node1's NodePort.
    expect_nodeport: Expect,
}

#[derive(Clone, Debug)]
enum Expect {
    Hosts(&'static [&'static str]),
    Refused,
    NoAnswer,
}

fn script() -> Vec<Step> {
    let (a1, a2, a3, b1, b2) =
        (pod("a1", "node1"), pod("a2", "node1"), pod("a3", "node1"), pod("b1", "node2"), pod("b2", "node2"));
    vec![
        Step {
            title: "3 pods: a1, a2 on node1, b1 on node2",
            pods: vec![a1, a2, b1],
            local: false,
            expect_cluster: Expect::Hosts(&["a1", "a2", "b1"]),
            expect_nodeport: Expect::Hosts(&["a1", "a2", "b1"]),
        },
        Step {
            title: "scale up: a3 and b2 join",
            pods: vec![a1, a2, a3, b1, b2],
            local: false,
            expect_cluster: Expect::Hosts(&["a1", "a2", "a3", "b1", "b2"]),
            expect_nodeport: Expect::Hosts(&["a1", "a2", "a3", "b1", "b2"]),
        },
        Step {
            title: "a1 and a2 are terminating (no longer ready)",
            pods: vec![
                Pod { ready: false, terminating: true, ..a1 },
                Pod { ready: false, terminating: true, ..a2 },
                a3,
                b1,
                b2,
            ],
            local: false,
            expect_cluster: Expect::Hosts(&["a3", "b1", "b2"]),
            expect_nodeport: Expect::Hosts(&["a3", "b1", "b2"]),
        },
        Step {
            title: "externalTrafficPolicy: Local (outside clients keep their source, node1's pods only)",
            pods: vec![a3, b1, b2],
            local: true,
            expect_cluster: Expect::Hosts(&["a3", "b1", "b2"]),
            expect_nodeport: Expect::Hosts(&["a3"]),
        },
        Step {
            title: "Local, and node1 has no pod left: outside traffic is dropped",
            pods: vec![b1, b2],
            local: true,
            expect_cluster: Expect::Hosts(&["b1", "b2"]),
            expect_nodeport: Expect::NoAnswer,
        },
        Step {
            title: "no endpoints at all: connections are refused at once",
            pods: vec![],
            local: false,
            expect_cluster: Expect::Refused,
            expect_nodeport: Expect::Refused,
        },
        Step {
            title: "back to 3 pods",
            pods: vec![a1, a2, b1],
            local: false,
            expect_cluster: Expect::Hosts(&["a1", "a2", "b1"]),
            expect_nodeport: Expect::Hosts(&["a1", "a2", "b1"]),
        },
    ]
}

/// The sample manifests for a step: a NodePort Service, its EndpointSlice and node1.
fn manifests(step: &Step) -> String {
    let policy = if step.local { "Local" } else { "Cluster" };
    let mut out = format!(
        "# switchyard sandbox: edit me while the sandbox runs.\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: demo\n\
         spec:\n  type: NodePort\n  clusterIP: {CLUSTER_IP}\n  clusterIPs: [{CLUSTER_IP}]\n\
         \x20 externalTrafficPolicy: {policy}\n\
         \x20 ports:\n  - name: http\n    port: {SERVICE_PORT}\n    targetPort: {POD_PORT}\n    nodePort: {NODE_PORT}\n    protocol: TCP\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: demo\n\
         \x20 labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\n\
         ports:\n- name: http\n  port: {POD_PORT}\n  protocol: TCP\nendpoints:"
    );
    if step.pods.is_empty() {
        out.push_str(" []\n");
    } else {
        out.push('\n');
    }
    for p in &step.pods {
        let ip = addresses::host(p.name).map(|h| h.ipv4.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  nodeName: {}\n  targetRef: {{kind: Pod, name: {}}}\n  conditions: {{ready: {}, serving: true, terminating: {}}}\n",
            p.node, p.name, p.ready, p.terminating
        ));
    }
    out.push_str(&format!(
        "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node1\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {}\n",
        addresses::node_address(addresses::NODE1, false).map(|a| a.to_string()).unwrap_or_default()
    ));
    out
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let err = |e: std::io::Error| ConformanceError::Lab { operation: format!("writing {}", path.display()), source: e };
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A minimal HTTP/1.0 request to the daemon's admin port inside node1's
/// namespace (written by hand: one request, no dependency worth adding).
async fn admin(lab: &Lab, method: &'static str, path: String) -> std::result::Result<(u16, String), String> {
    lab.node1()
        .run_async(move || {
            let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], 10249)), Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
            write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut body = String::new();
            s.read_to_string(&mut body).map_err(|e| e.to_string())?;
            let code = body.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            let text = body.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
            Ok((code, text))
        })
        .await
        .map_err(|e| e.to_string())?
}

/// What one view (a client and a frontend) saw in one round.
#[derive(Debug, Default)]
struct Seen {
    hosts: BTreeMap<String, u32>,
    peers: BTreeSet<IpAddr>,
    refused: u32,
    timeouts: u32,
    errors: Vec<String>,
}

impl Seen {
    fn absorb(&mut self, other: Seen) {
        for (h, n) in other.hosts {
            *self.hosts.entry(h).or_default() += n;
        }
        self.peers.extend(other.peers);
        self.refused += other.refused;
        self.timeouts += other.timeouts;
        self.errors.extend(other.errors);
    }

    /// Every expected pod has answered (nothing else is judged here).
    fn complete(&self, want: &Expect) -> bool {
        match want {
            Expect::Hosts(hosts) => hosts.iter().all(|h| self.hosts.contains_key(*h)),
            Expect::Refused => self.refused > 0,
            Expect::NoAnswer => self.timeouts > 0,
        }
    }

    /// Exactly the expected pods answered, and nothing was lost.
    fn matches(&self, want: &Expect) -> bool {
        match want {
            Expect::Hosts(hosts) => {
                let got: BTreeSet<&str> = self.hosts.keys().map(String::as_str).collect();
                let want: BTreeSet<&str> = hosts.iter().copied().collect();
                got == want && self.refused == 0 && self.timeouts == 0
            }
            Expect::Refused => self.hosts.is_empty() && self.refused > 0,
            Expect::NoAnswer => self.hosts.is_empty() && self.refused == 0 && self.timeouts > 0,
        }
    }

    fn render(&self) -> String {
        let mut parts: Vec<String> =
            self.hosts.iter().map(|(h, n)| format!("{h} {} {n}", "█".repeat((*n).min(12) as usize))).collect();
        if self.refused > 0 {
            parts.push(format!("refused ×{}", self.refused));
        }
        if self.timeouts > 0 {
            parts.push(format!("no answer ×{}", self.timeouts));
        }
        parts.extend(self.errors.iter().cloned());
        let peers: Vec<String> = self.peers.iter().map(ToString::to_string).collect();
        if peers.is_empty() {
            parts.join("  ")
        } else {
            format!("{:<44} pod saw {}", parts.join("  "), peers.join(", "))
        }
    }
}

/// One client and one frontend to watch.
struct View {
    label: &'static str,
    client: &'static str,
    dst: SocketAddr,
}

fn views() -> Vec<View> {
    let cluster_ip: IpAddr = CLUSTER_IP.parse().unwrap_or(IpAddr::from([10, 96, 0, 10]));
    let node1 = addresses::node_address(addresses::NODE1, false).unwrap_or(IpAddr::from([172, 18, 0, 11]));
    vec![
        View { label: "pod client1 → ClusterIP", client: "client1", dst: SocketAddr::new(cluster_ip, SERVICE_PORT) },
        View {
            label: "external    → NodePort ", client: addresses::EXTERNAL, dst: SocketAddr::new(node1, NODE_PORT)
        },
    ]
}

async fn observe(lab: &Lab, view: &View, count: u32) -> Result<Seen> {
    let req =
        AgentRequest::Probe { proto: Proto::Tcp, dst: view.dst, src_ip: None, src_port: None, count, timeout_ms: 300 };
    let mut seen = Seen::default();
    match lab.agent(view.client)?.request(&req).await? {
        AgentResponse::Attempts { attempts } => {
            for a in attempts {
                match a.outcome {
                    Outcome::Reply { host, peer } => {
                        *seen.hosts.entry(host).or_default() += 1;
                        seen.peers.insert(peer.ip());
                    }
                    Outcome::Refused => seen.refused += 1,
                    Outcome::Timeout => seen.timeouts += 1,
                    Outcome::Unreachable { detail } | Outcome::Error { detail } => seen.errors.push(detail),
                }
            }
        }
        AgentResponse::Error { message } => seen.errors.push(message),
        AgentResponse::Ok => {}
    }
    Ok(seen)
}

/// Runs the sandbox until the script ends (plus `linger`) or `stop` resolves.
#[allow(clippy::print_stdout, reason = "the sandbox's product is its live view on stdout")]
pub async fn run(cfg: SandboxConfig, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    let mut ports = EchoPorts::default();
    ports.insert(Proto::Tcp, POD_PORT);
    println!("building the sandbox cluster (network namespaces, veth pairs, echo servers)...");
    let lab = Lab::create(LabConfig::current_exe(ports)?).await?;
    let result = run_in(&lab, &cfg, stop).await;
    println!("\ntearing down the sandbox...");
    lab.teardown().await;
    result
}

#[allow(clippy::print_stdout, reason = "the sandbox's product is its live view on stdout")]
async fn run_in(lab: &Lab, cfg: &SandboxConfig, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    tokio::pin!(stop);
    let lab_err = |operation: &str, e: std::io::Error| ConformanceError::Lab { operation: operation.into(), source: e };
    let (dir, temporary) = match &cfg.manifests {
        Some(d) => (d.clone(), false),
        None => (std::env::temp_dir().join(format!("switchyard-sandbox-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&dir).map_err(|e| lab_err("creating the manifest directory", e))?;
    let manifest = dir.join("web.yaml");
    let steps = script();
    write_atomically(&manifest, &manifests(&steps[0]))?;

    let ctx =
        lab.backend_context(FamilySet::V4, Lab::default_masquerade(), NodePortAddresses::All, serde_json::Value::Null);
    // The sandbox waits for each step with POST /debug/barrier: a debug
    // handler, off unless asked for.
    let mut extra_args = vec!["--enable-debug-handlers=true".to_string()];
    extra_args.extend(cfg.extra_args.iter().cloned());
    let spec = ExternalBinary::new(cfg.switchyard_bin.clone(), cfg.mode.clone(), extra_args);
    let args = spec.args(&ctx, &crate::driver::SourceArg::File(dir.clone()));
    let log_path = dir.join("switchyard.log");
    let log = std::fs::File::create(&log_path).map_err(|e| lab_err("creating the daemon log", e))?;
    println!("running: {} {}", cfg.switchyard_bin.display(), args.join(" "));
    println!("  in node1's network namespace {}", lab.info().node1_netns.display());
    println!("  manifests: {}   (edit them: switchyard follows)", manifest.display());
    println!("  daemon log: {}", log_path.display());
    let mut child = lab
        .node1()
        .tokio_command(&cfg.switchyard_bin)
        .map_err(|e| lab_err("entering node1", e))?
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| lab_err("daemon log", e))?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| lab_err(&format!("starting {}", cfg.switchyard_bin.display()), e))?;

    let outcome = drive(lab, cfg, &manifest, &steps, &mut child, &mut stop).await;

    if let Some(pid) = child.id() {
        // A clean stop (SIGTERM) leaves the rules; the namespace goes with the lab.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
        let _ = child.start_kill();
    }
    if temporary && outcome.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else if outcome.is_err() {
        println!("the daemon's log is kept at {}", log_path.display());
    }
    outcome
}

#[allow(clippy::print_stdout, reason = "the sandbox's product is its live view on stdout")]
async fn drive(
    lab: &Lab,
    cfg: &SandboxConfig,
    manifest: &Path,
    steps: &[Step],
    child: &mut tokio::process::Child,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<()> {
    let fail = |message: String| ConformanceError::Driver { driver: "sandbox".into(), message };
    // Ready once the first sync is done.
    let started = Instant::now();
    loop {
        if let Ok((200, _)) = admin(lab, "GET", "/readyz".into()).await {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!("switchyard exited with {status} before its first sync; see its log")));
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(fail("switchyard did not become ready within 30 s; see its log".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("switchyard is ready after {} ms\n", started.elapsed().as_millis());

    let t0 = Instant::now();
    let views = views();
    let mut failures = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if i > 0 {
            write_atomically(manifest, &manifests(step))?;
            let changed = Instant::now();
            let programmed = match admin(lab, "POST", "/debug/barrier?timeout=10s".into()).await {
                Ok((200, _)) => format!("programmed in {} ms", changed.elapsed().as_millis()),
                Ok((code, body)) => format!("barrier answered {code}: {}", body.trim()),
                Err(e) => format!("barrier failed: {e}"),
            };
            println!("\n▶ {}   [{programmed}]", step.title);
        } else {
            println!("▶ {}", step.title);
        }
        let step_end = Instant::now() + cfg.step;
        // What each view saw from the second round on (the first may race
        // conntrack entries of flows made before the change).
        let mut totals: Vec<Seen> = views.iter().map(|_| Seen::default()).collect();
        let mut round = 0;
        loop {
            round += 1;
            let more = Instant::now() < step_end;
            // With `check`, keep probing (bounded) until every expected pod answered.
            let incomplete = cfg.check
                && round <= 20
                && totals.iter().zip([&step.expect_cluster, &step.expect_nodeport]).any(|(t, w)| !t.complete(w));
            if !more && !incomplete {
                break;
            }
            for (i, view) in views.iter().enumerate() {
                let seen = observe(lab, view, 6).await?;
                println!("{:>5.1}s  {}  {}", t0.elapsed().as_secs_f64(), view.label, seen.render());
                if round > 1 {
                    totals[i].absorb(seen);
                }
            }
            tokio::select! {
                _ = stop.as_mut() => return finish(failures, true),
                _ = tokio::time::sleep(Duration::from_millis(700)) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(format!("switchyard exited with {status}; see its log")));
            }
        }
        if cfg.check {
            for ((view, want), seen) in views.iter().zip([&step.expect_cluster, &step.expect_nodeport]).zip(&totals) {
                if !seen.matches(want) {
                    failures.push(format!(
                        "step {:?}: {}: expected {want:?}, saw {}",
                        step.title,
                        view.label,
                        seen.render()
                    ));
                }
            }
        }
    }
    if let Some(linger) = cfg.linger {
        println!(
            "\nscript done; watching for another {} s (edit {} to see switchyard follow)",
            linger.as_secs(),
            manifest.display()
        );
        tokio::select! {
            _ = stop.as_mut() => {}
            _ = tokio::time::sleep(linger) => {}
        }
    } else {
        println!("\nscript done; edit {} and watch switchyard follow. Ctrl-C to stop.", manifest.display());
        loop {
            for view in &views {
                let seen = observe(lab, view, 6).await?;
                println!("{:>5.1}s  {}  {}", t0.elapsed().as_secs_f64(), view.label, seen.render());
            }
            tokio::select! {
                _ = stop.as_mut() => break,
                _ = tokio::time::sleep(Duration::from_millis(1000)) => {}
            }
        }
    }
    finish(failures, false)
}

#[allow(clippy::print_stdout, reason = "the sandbox's product is its live view on stdout")]
fn finish(failures: Vec<String>, interrupted: bool) -> Result<()> {
    if interrupted {
        println!("\ninterrupted");
    }
    if failures.is_empty() {
        return Ok(());
    }
    for f in &failures {
        println!("CHECK FAILED: {f}");
    }
    Err(ConformanceError::Driver { driver: "sandbox".into(), message: format!("{} checks failed", failures.len()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_renders_manifests_the_core_accepts() {
        use proxy_core::convert::{Conversion, ConvertContext, endpoint_slice_from_k8s, service_from_k8s};
        for step in script() {
            let text = manifests(&step);
            let docs: Vec<serde_json::Value> =
                text.split("\n---\n").map(|d| serde_saphyr::from_str(d).expect("valid YAML")).collect();
            assert_eq!(docs.len(), 3);
            let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(docs[0].clone()).expect("a Service");
            let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
                serde_json::from_value(docs[1].clone()).expect("an EndpointSlice");
            let ctx = ConvertContext::default();
            let Ok(Conversion::Accepted { warnings, .. }) = service_from_k8s(&svc, &ctx) else { panic!("{text}") };
            assert!(warnings.is_empty());
            let Ok(Conversion::Accepted { value, warnings }) = endpoint_slice_from_k8s(&slice, &ctx) else { panic!() };
            assert!(warnings.is_empty());
            assert_eq!(value.endpoints.len(), step.pods.len());
        }
    }

    #[test]
    fn expectations_judge_observations() {
        let mut seen = Seen::default();
        seen.hosts.insert("a1".into(), 3);
        assert!(seen.matches(&Expect::Hosts(&["a1"])));
        assert!(!seen.matches(&Expect::Hosts(&["a1", "a2"])));
        assert!(!seen.matches(&Expect::Refused));
        seen.timeouts = 1;
        assert!(!seen.matches(&Expect::Hosts(&["a1"])), "a lost connection fails a forwarding step");
        let refused = Seen { refused: 6, ..Seen::default() };
        assert!(refused.matches(&Expect::Refused) && !refused.matches(&Expect::NoAnswer));
        let dropped = Seen { timeouts: 6, ..Seen::default() };
        assert!(dropped.matches(&Expect::NoAnswer) && !dropped.matches(&Expect::Refused));
    }
}
