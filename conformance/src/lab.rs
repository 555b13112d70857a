//! The lab: network namespaces made for one run, wired like a small cluster.
//!
//! See [`crate::addresses`] for the address plan and diagram. Every
//! namespace name starts with `swy-lab-<pid>-<n>-`, unique per run; the lab
//! never changes the root namespace (every `ip` command names a lab
//! namespace with `-n`, every sysctl runs under `ip netns exec`). Teardown
//! (agents killed by pid, namespaces deleted, the lab's cgroup removed)
//! happens in [`Lab::teardown`] and, on every other path, in `Drop`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ipnet::IpNet;
use proxy_core::{BackendContext, FamilySet, MasqueradeConfig, NetNamespace, NodePortAddresses};
use testkit::{Netns, cgroup2_root};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tracing::{debug, info, warn};

use crate::addresses::{self, HostKind, HostPlan};
use crate::agent::{AGENT_SUBCOMMAND, AgentArgs, AgentRequest, AgentResponse, EchoPorts};
use crate::error::{ConformanceError, Result};
use crate::patience::patience;

/// What a lab is built with.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// The binary that runs agents (`<exe> __swy-lab-agent ...`): the runner
    /// binary itself, or `CARGO_BIN_EXE_switchyard-conformance` in tests.
    pub agent_exe: PathBuf,
    /// Ports every host's echo server listens on.
    pub ports: EchoPorts,
}

impl LabConfig {
    /// Agents run from the current executable.
    pub fn current_exe(ports: EchoPorts) -> Result<LabConfig> {
        let agent_exe = std::env::current_exe()
            .map_err(|source| ConformanceError::Lab { operation: "finding the current executable".into(), source })?;
        Ok(LabConfig { agent_exe, ports })
    }
}

/// Facts about a lab that backends and reports may need.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LabInfo {
    /// The namespace name prefix of this run.
    pub prefix: String,
    /// node1's namespace path (`/run/netns/...`): where the backend programs.
    pub node1_netns: PathBuf,
    /// A cgroup v2 directory the lab created, holding node1's processes
    /// (host network agent and node1's pods), for cgroup-attached BPF.
    pub cgroup: Option<PathBuf>,
    /// `Err(reason)` when the kernel has no SCTP.
    pub sctp: std::result::Result<(), String>,
    pub ipv6: bool,
    /// node1's interfaces: `eth0` (cluster network), `eth1` (second
    /// address), and one `p-<pod>` veth per pod, for TC programs.
    pub node1_interfaces: Vec<String>,
}

/// A running agent: one per lab host.
#[derive(Debug)]
pub struct Agent {
    pub host: &'static HostPlan,
    pid: Option<u32>,
    child: Child,
    io: tokio::sync::Mutex<(ChildStdin, Lines<BufReader<ChildStdout>>)>,
}

impl Agent {
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Sends one request and reads its answer.
    pub async fn request(&self, req: &AgentRequest) -> Result<AgentResponse> {
        let err = |message: String| ConformanceError::Agent { host: self.host.name.to_string(), message };
        let text = serde_json::to_string(req).map_err(|e| err(e.to_string()))?;
        let mut io = self.io.lock().await;
        io.0.write_all(format!("{text}\n").as_bytes()).await.map_err(|e| err(format!("writing: {e}")))?;
        io.0.flush().await.map_err(|e| err(format!("writing: {e}")))?;
        let line = io.1.next_line().await.map_err(|e| err(format!("reading: {e}")))?;
        let line = line.ok_or_else(|| err("agent exited".into()))?;
        serde_json::from_str(&line).map_err(|e| err(format!("bad answer {line:?}: {e}")))
    }
}

/// The lab of one run.
#[derive(Debug)]
pub struct Lab {
    info: LabInfo,
    /// Guards of the lab's namespaces, in creation order.
    namespaces: Vec<Netns>,
    agents: BTreeMap<&'static str, Agent>,
    torn_down: bool,
}

/// Runs `ip` with arguments; every call names a lab namespace.
fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    debug!(command = %format!("{program} {}", args.join(" ")), "lab");
    testkit::run(program, args).map_err(command_failed)
}

fn command_failed(e: testkit::CommandError) -> ConformanceError {
    ConformanceError::LabCommand { command: e.command, message: e.message }
}

/// Whether the kernel has SCTP, asked inside a lab namespace.
fn sctp_support(ns: &NetNamespace) -> std::result::Result<(), String> {
    let probe = ns.run(|| {
        socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::from(libc::IPPROTO_SCTP)),
        )
        .map(drop)
    });
    match probe {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("kernel has no SCTP: socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): {e}")),
        Err(e) => Err(format!("could not check SCTP: {e}")),
    }
}

impl Lab {
    /// Builds the lab and starts an agent on every host. Needs root.
    pub async fn create(config: LabConfig) -> Result<Lab> {
        let uid = nix::unistd::geteuid().as_raw();
        if uid != 0 {
            return Err(ConformanceError::NotRoot { uid });
        }
        let prefix = format!("{}-", testkit::netns::unique_prefix("lab"));
        let ipv6 = Path::new("/proc/sys/net/ipv6").exists();
        let mut lab = Lab {
            info: LabInfo {
                prefix: prefix.clone(),
                node1_netns: PathBuf::from("/run/netns").join(format!("{prefix}{}", addresses::NODE1)),
                cgroup: None,
                sctp: Err("not checked".into()),
                ipv6,
                node1_interfaces: Vec::new(),
            },
            namespaces: Vec::new(),
            agents: BTreeMap::new(),
            torn_down: false,
        };
        // Wiring runs synchronously on purpose: a future is only cancelled at
        // an await point, so Ctrl-C cannot interrupt it between creating a
        // namespace and recording it in the guard (it takes well under a second).
        wire(&lab.info.prefix.clone(), ipv6, &mut lab.namespaces)?;
        lab.info.node1_interfaces = ["eth0", "eth1"]
            .into_iter()
            .map(String::from)
            .chain(
                addresses::HOSTS
                    .iter()
                    .filter(|h| h.kind == HostKind::Pod && h.node == Some(addresses::NODE1))
                    .map(|h| format!("p-{}", h.name)),
            )
            .collect();
        lab.info.sctp = sctp_support(&lab.netns_of(addresses::NODE1));
        lab.info.cgroup = lab.make_cgroup();
        for host in addresses::HOSTS {
            let mut ports = config.ports.clone();
            if lab.info.sctp.is_err() {
                ports.sctp.clear();
            }
            let agent = lab.spawn_agent(&config.agent_exe, host, ports).await?;
            lab.agents.insert(host.name, agent);
        }
        info!(prefix = %lab.info.prefix, ipv6, sctp = lab.info.sctp.is_ok(), cgroup = ?lab.info.cgroup, "lab ready");
        Ok(lab)
    }

    pub fn info(&self) -> &LabInfo {
        &self.info
    }

    /// A cgroup v2 directory the lab created (node1's processes are in it),
    /// for backends with cgroup-attached programs; `None` when unavailable.
    pub fn cgroup(&self) -> Option<&Path> {
        self.info.cgroup.as_deref()
    }

    /// The namespace of a lab host.
    pub fn netns_of(&self, host: &str) -> NetNamespace {
        NetNamespace::named(&format!("{}{host}", self.info.prefix))
    }

    /// node1's namespace: where the backend under test programs.
    pub fn node1(&self) -> NetNamespace {
        NetNamespace::at(&self.info.node1_netns)
    }

    pub fn agent(&self, host: &str) -> Result<&Agent> {
        self.agents
            .get(host)
            .ok_or_else(|| ConformanceError::Agent { host: host.to_string(), message: "no such lab host".into() })
    }

    /// A backend context for node1 with the lab's addresses.
    pub fn backend_context(
        &self,
        families: FamilySet,
        masquerade: MasqueradeConfig,
        nodeport_addresses: NodePortAddresses,
        section: serde_json::Value,
    ) -> BackendContext {
        let mut ctx = BackendContext::new(addresses::NODE1, self.node1());
        ctx.families = families;
        ctx.masquerade = masquerade;
        ctx.nodeport_addresses = nodeport_addresses;
        ctx.node_ips = addresses::node1_primary_ips()
            .into_iter()
            .filter(|ip| families.contains(proxy_core::IpFamily::of(ip)))
            .collect();
        ctx.section = section;
        ctx
    }

    /// The lab's default masquerade configuration: pod CIDRs as cluster CIDRs.
    pub fn default_masquerade() -> MasqueradeConfig {
        MasqueradeConfig { all: false, cluster_cidrs: addresses::cluster_cidrs() }
    }

    /// Between scenarios: closes held connections and flushes conntrack in
    /// the lab's routing namespaces, so one scenario's flows do not leak into
    /// the next (the same addresses are reused).
    pub async fn reset(&self) -> Result<()> {
        for agent in self.agents.values() {
            agent.request(&AgentRequest::CloseAll).await?;
        }
        let names: Vec<String> =
            ["fab", addresses::NODE1, addresses::NODE2].iter().map(|h| format!("{}{h}", self.info.prefix)).collect();
        tokio::task::spawn_blocking(move || {
            for ns in names {
                // `conntrack -F` prints to stderr even on success; only a spawn failure matters.
                if let Err(e) = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns, "conntrack", "-F"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                {
                    warn!(namespace = %ns, error = %e, "could not flush conntrack");
                }
            }
        })
        .await
        .map_err(|e| ConformanceError::Lab {
            operation: "flushing conntrack".into(),
            source: std::io::Error::other(e),
        })?;
        Ok(())
    }

    fn make_cgroup(&self) -> Option<PathBuf> {
        let root = cgroup2_root()?;
        let dir = root.join(self.info.prefix.trim_end_matches('-'));
        match std::fs::create_dir(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                warn!(path = %dir.display(), error = %e, "no lab cgroup; cgroup-attached backends cannot run");
                None
            }
        }
    }

    async fn spawn_agent(&self, exe: &Path, host: &'static HostPlan, ports: EchoPorts) -> Result<Agent> {
        let ns = self.netns_of(host.name);
        let args = AgentArgs { name: host.name.to_string(), netns: ns.path().map(Path::to_path_buf), ports };
        let mut child = tokio::process::Command::new(exe)
            .arg(AGENT_SUBCOMMAND)
            .args(args.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ConformanceError::Lab { operation: format!("starting agent {}", host.name), source })?;
        let pid = child.id();
        let err = |message: String| ConformanceError::Agent { host: host.name.to_string(), message };
        let stdin = child.stdin.take().ok_or_else(|| err("no stdin".into()))?;
        let stdout = child.stdout.take().ok_or_else(|| err("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(patience(), lines.next_line()).await;
        match ready {
            Ok(Ok(Some(l))) if l == "ready" => {}
            other => return Err(err(format!("did not become ready: {other:?}"))),
        }
        if host.node == Some(addresses::NODE1)
            && let (Some(cg), Some(pid)) = (&self.info.cgroup, pid)
            && let Err(e) = std::fs::write(cg.join("cgroup.procs"), pid.to_string())
        {
            warn!(host = host.name, error = %e, "could not move agent into the lab cgroup");
        }
        Ok(Agent { host, pid, child, io: tokio::sync::Mutex::new((stdin, lines)) })
    }

    /// Tears everything down: agents (by pid), namespaces, the cgroup.
    pub async fn teardown(mut self) {
        for agent in self.agents.values_mut() {
            let _ = agent.child.start_kill();
        }
        for agent in self.agents.values_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(5), agent.child.wait()).await;
        }
        // Namespace deletion and cgroup removal block: run them off the executor.
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }

    fn teardown_sync(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        // Agents in the lab cgroup move back to the root first, so the
        // cgroup is empty at once and can be removed without waiting for the
        // killed processes to be reaped.
        let root = cgroup2_root();
        for agent in self.agents.values_mut() {
            if let (Some(_), Some(root), Some(pid)) = (&self.info.cgroup, &root, agent.pid) {
                let _ = std::fs::write(root.join("cgroup.procs"), pid.to_string());
            }
            let _ = agent.child.start_kill();
        }
        self.agents.clear();
        for ns in self.namespaces.drain(..).rev() {
            let name = ns.name().to_string();
            if let Err(e) = ns.delete() {
                warn!(namespace = %name, error = %e, "could not delete lab namespace");
            }
        }
        if let Some(cg) = self.info.cgroup.take()
            && let Err(e) = std::fs::remove_dir(&cg)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %cg.display(), error = %e, "could not remove the lab cgroup");
        }
        info!(prefix = %self.info.prefix, "lab torn down");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown_sync();
    }
}

/// Deletes namespaces and cgroups of labs whose runner process is gone
/// (a run killed with SIGKILL cannot clean up after itself).
pub fn collect_stale() -> Vec<String> {
    testkit::netns::collect_stale("lab")
}

/// A batch of `ip` commands against lab namespaces.
struct Wiring<'a> {
    prefix: &'a str,
    ipv6: bool,
}

impl Wiring<'_> {
    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// `ip -n <ns> <args>`.
    fn in_ns(&self, host: &str, args: &[&str]) -> Result<()> {
        let ns = self.ns(host);
        let mut full = vec!["-n", ns.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    fn in_ns6(&self, host: &str, args: &[&str]) -> Result<()> {
        if !self.ipv6 {
            return Ok(());
        }
        let ns = self.ns(host);
        let mut full = vec!["-6", "-n", ns.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// `ip netns exec <ns> sysctl -q -w k=v ...` (per-namespace sysctls only).
    fn sysctl(&self, host: &str, settings: &[&str]) -> Result<()> {
        let ns = self.ns(host);
        let mut args = vec!["netns", "exec", ns.as_str(), "sysctl", "-q", "-w"];
        args.extend(settings.iter().filter(|s| self.ipv6 || !s.starts_with("net.ipv6")));
        ip(&args)
    }

    /// A veth pair: `ip -n <a> link add <a_if> type veth peer name <b_if> netns <b>`.
    fn veth(&self, a: &str, a_if: &str, b: &str, b_if: &str) -> Result<()> {
        let b_ns = self.ns(b);
        self.in_ns(a, &["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b_ns])?;
        self.in_ns(a, &["link", "set", a_if, "up"])?;
        self.in_ns(b, &["link", "set", b_if, "up"])
    }
}

/// Creates and wires every namespace; `created` collects their guards for teardown.
fn wire(prefix: &str, ipv6: bool, created: &mut Vec<Netns>) -> Result<()> {
    let w = Wiring { prefix, ipv6 };
    let mut all: Vec<&str> = vec!["fab"];
    all.extend(addresses::HOSTS.iter().map(|h| h.name));
    for host in &all {
        // Loopback comes up here too.
        created.push(Netns::create(w.ns(host)).map_err(command_failed)?);
    }
    // ICMP rate limits are per namespace and per peer: one scenario's
    // rejections (or a routing loop's time-exceeded messages) would make the
    // next scenario's "refused" probes time out. The lab turns them off.
    let common = [
        "net.ipv4.icmp_ratelimit=0",
        "net.ipv4.icmp_ratemask=0",
        "net.ipv6.icmp.ratelimit=0",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ];
    let router = [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.default.send_redirects=0",
    ];
    for host in &all {
        let mut settings: Vec<&str> = common.to_vec();
        if matches!(*host, "fab" | addresses::NODE1 | addresses::NODE2) {
            settings.extend(router);
        }
        w.sysctl(host, &settings)?;
    }

    // The fabric: a bridge for the cluster network, routes to node1 for Service ranges.
    let s = |x: &dyn std::fmt::Display| x.to_string();
    let n1 = addresses::host(addresses::NODE1).cloned().ok_or_else(|| missing("node1"))?;
    let n2 = addresses::host(addresses::NODE2).cloned().ok_or_else(|| missing("node2"))?;
    let ext = addresses::host(addresses::EXTERNAL).cloned().ok_or_else(|| missing("external"))?;
    w.in_ns("fab", &["link", "add", "br0", "type", "bridge"])?;
    w.in_ns("fab", &["link", "set", "br0", "up"])?;
    w.in_ns("fab", &["addr", "add", &format!("{}/24", addresses::FABRIC_V4), "dev", "br0"])?;
    w.in_ns6("fab", &["addr", "add", &format!("{}/64", addresses::FABRIC_V6), "dev", "br0", "nodad"])?;
    for (node, port) in [(addresses::NODE1, "n1"), (addresses::NODE2, "n2")] {
        w.veth(node, "eth0", "fab", port)?;
        w.in_ns("fab", &["link", "set", port, "master", "br0"])?;
    }
    w.veth(addresses::NODE1, "eth1", "fab", "n1b")?;
    w.in_ns("fab", &["addr", "add", &format!("{}/24", addresses::FABRIC_SECOND_V4), "dev", "n1b"])?;
    w.in_ns6("fab", &["addr", "add", &format!("{}/64", addresses::FABRIC_SECOND_V6), "dev", "n1b", "nodad"])?;
    w.veth(addresses::EXTERNAL, "eth0", "fab", "x0")?;
    w.in_ns("fab", &["addr", "add", &format!("{}/24", addresses::FABRIC_EXT_V4), "dev", "x0"])?;
    w.in_ns6("fab", &["addr", "add", &format!("{}/64", addresses::FABRIC_EXT_V6), "dev", "x0", "nodad"])?;

    for node in [&n1, &n2] {
        w.in_ns(node.name, &["addr", "add", &format!("{}/24", node.ipv4), "dev", "eth0"])?;
        w.in_ns6(node.name, &["addr", "add", &format!("{}/64", node.ipv6), "dev", "eth0", "nodad"])?;
        w.in_ns(node.name, &["route", "add", "default", "via", &s(&addresses::FABRIC_V4)])?;
        w.in_ns6(node.name, &["route", "add", "default", "via", &s(&addresses::FABRIC_V6)])?;
    }
    w.in_ns(n1.name, &["addr", "add", &format!("{}/24", addresses::NODE1_SECOND_V4), "dev", "eth1"])?;
    w.in_ns6(n1.name, &["addr", "add", &format!("{}/64", addresses::NODE1_SECOND_V6), "dev", "eth1", "nodad"])?;
    w.in_ns(ext.name, &["addr", "add", &format!("{}/24", ext.ipv4), "dev", "eth0"])?;
    w.in_ns6(ext.name, &["addr", "add", &format!("{}/64", ext.ipv6), "dev", "eth0", "nodad"])?;
    w.in_ns(ext.name, &["route", "add", "default", "via", &s(&addresses::FABRIC_EXT_V4)])?;
    w.in_ns6(ext.name, &["route", "add", "default", "via", &s(&addresses::FABRIC_EXT_V6)])?;

    let pod_cidr = |n: u8, v6: bool| {
        if v6 { format!("fd00:10:244:{n}::/64") } else { format!("10.244.{n}.0/24") }
    };
    let to_node1_v4 = [pod_cidr(1, false), addresses::SERVICE_CIDR_V4.into(), addresses::EXTERNAL_RANGE_V4.into()];
    let to_node1_v6 = [pod_cidr(1, true), addresses::SERVICE_CIDR_V6.into(), addresses::EXTERNAL_RANGE_V6.into()];
    for (router, v4s, v6s) in [("fab", true, true), (addresses::NODE2, true, true)] {
        if v4s {
            for dst in &to_node1_v4 {
                w.in_ns(router, &["route", "add", dst, "via", &s(&n1.ipv4)])?;
            }
        }
        if v6s {
            for dst in &to_node1_v6 {
                w.in_ns6(router, &["route", "add", dst, "via", &s(&n1.ipv6)])?;
            }
        }
    }
    w.in_ns("fab", &["route", "add", &pod_cidr(2, false), "via", &s(&n2.ipv4)])?;
    w.in_ns6("fab", &["route", "add", &pod_cidr(2, true), "via", &s(&n2.ipv6)])?;
    w.in_ns(n1.name, &["route", "add", &pod_cidr(2, false), "via", &s(&n2.ipv4)])?;
    w.in_ns6(n1.name, &["route", "add", &pod_cidr(2, true), "via", &s(&n2.ipv6)])?;

    // Pods: a routed veth each (as Calico-style CNIs do): the node holds the
    // gateway on every pod veth and a /32 (/128) route per pod.
    for pod in addresses::HOSTS.iter().filter(|h| h.kind == HostKind::Pod) {
        let node = pod.node.ok_or_else(|| missing(pod.name))?;
        let n: u8 = if node == addresses::NODE1 { 1 } else { 2 };
        let gw = addresses::pod_gateway_v4(n);
        let veth = format!("p-{}", pod.name);
        w.veth(node, &veth, pod.name, "eth0")?;
        w.in_ns(node, &["addr", "add", &format!("{gw}/32"), "dev", &veth])?;
        w.in_ns6(node, &["addr", "add", &format!("{}/64", addresses::POD_GATEWAY_V6), "dev", &veth, "nodad"])?;
        let gw6 = addresses::pod_gateway_global_v6(n);
        w.in_ns6(node, &["addr", "add", &format!("{gw6}/128"), "dev", &veth, "nodad"])?;
        w.in_ns(node, &["route", "add", &format!("{}/32", pod.ipv4), "dev", &veth, "src", &s(&gw)])?;
        w.in_ns6(node, &["route", "add", &format!("{}/128", pod.ipv6), "dev", &veth])?;
        w.in_ns(pod.name, &["addr", "add", &format!("{}/32", pod.ipv4), "dev", "eth0"])?;
        w.in_ns6(pod.name, &["addr", "add", &format!("{}/128", pod.ipv6), "dev", "eth0", "nodad"])?;
        w.in_ns(pod.name, &["route", "add", &s(&gw), "dev", "eth0", "scope", "link"])?;
        w.in_ns(pod.name, &["route", "add", "default", "via", &s(&gw), "dev", "eth0"])?;
        w.in_ns6(pod.name, &["route", "add", "default", "via", &s(&addresses::POD_GATEWAY_V6), "dev", "eth0"])?;
    }
    Ok(())
}

fn missing(what: &str) -> ConformanceError {
    ConformanceError::LabCommand { command: "address plan".into(), message: format!("no host {what}") }
}

/// The lab's cluster CIDRs restricted to a family set.
pub fn cluster_cidrs_for(families: FamilySet) -> Vec<IpNet> {
    addresses::cluster_cidrs()
        .into_iter()
        .filter(|c| {
            families.contains(if c.addr().is_ipv4() { proxy_core::IpFamily::V4 } else { proxy_core::IpFamily::V6 })
        })
        .collect()
}
