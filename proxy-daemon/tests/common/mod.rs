//! Helpers shared by the daemon's integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use testkit::{eventually, patience};

/// A minimal HTTP/1.1 exchange (no client crate needed): (status, headers, body).
pub fn http(method: &str, addr: SocketAddr, path: &str, body: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Ok((status, head.to_string(), body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub async fn http_async(
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let (m, p, b) = (method.to_string(), path.to_string(), body.to_string());
    tokio::task::spawn_blocking(move || http(&m, addr, &p, &b)).await.expect("http task")
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// The `switchyard` binary.
pub fn switchyard_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchyard"))
}

/// The example custom build with the in-memory "memory" dataplane
/// (`cargo test` builds examples; built here if a filtered run skipped it).
pub fn memory_bin() -> PathBuf {
    let bin = switchyard_bin();
    let dir = bin.parent().expect("target dir");
    let path = dir.join("examples").join("custom_dataplane");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "proxy-daemon", "--example", "custom_dataplane"])
            .status()
            .expect("cargo build --example");
        assert!(status.success(), "building the example failed");
    }
    path
}

/// Flags that keep a daemon away from the conntrack sysctls (kube-proxy's
/// `maxPerCore: 0` and zero timeouts): for a daemon in the root namespace.
pub const NO_CONNTRACK_SYSCTLS: &[&str] =
    &["--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0s", "--conntrack-tcp-timeout-close-wait=0s"];

/// A daemon process started by a test; SIGTERM then SIGKILL (by pid) on drop.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub metrics: SocketAddr,
    pub healthz: SocketAddr,
}

impl Daemon {
    /// Starts `bin` with admin ports on free loopback ports and `args`.
    pub fn start(bin: &Path, dir: &Path, args: &[&str]) -> Daemon {
        Self::start_with_env(bin, dir, args, &[])
    }

    pub fn start_with_env(bin: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_inner(None, bin, dir, args, env, true)
    }

    /// Starts the whole process inside a network namespace (`ip netns exec`,
    /// which execs, so the child's pid is the daemon's). Its admin ports are
    /// on that namespace's loopback: reach them with [`NetnsHandle::http`].
    pub fn start_in_netns(netns: &str, bin: &Path, dir: &Path, args: &[&str]) -> Daemon {
        Self::start_inner(Some((netns, &[])), bin, dir, args, &[], true)
    }

    /// As [`Daemon::start_in_netns`], through `wrapper` (a command that ends
    /// by exec-ing its arguments, e.g. `setpriv … --`), so the pid is still
    /// the daemon's.
    pub fn start_in_netns_with(netns: &str, wrapper: &[&str], bin: &Path, dir: &Path, args: &[&str]) -> Daemon {
        Self::start_inner(Some((netns, wrapper)), bin, dir, args, &[], true)
    }

    /// Starts `bin` as an operator would: without `--enable-debug-handlers`
    /// (every other constructor opts in, for [`Daemon::barrier`] and `/debug/state`).
    pub fn start_without_debug_handlers(bin: &Path, dir: &Path, args: &[&str]) -> Daemon {
        Self::start_inner(None, bin, dir, args, &[], false)
    }

    fn start_inner(
        netns: Option<(&str, &[&str])>,
        bin: &Path,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        debug_handlers: bool,
    ) -> Daemon {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let healthz: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = dir.join(format!("daemon-{}.log", metrics.port()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = match netns {
            Some((ns, wrapper)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).args(wrapper).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        if debug_handlers {
            // The tests drive the daemon through /debug/barrier and read /debug/state.
            cmd.arg("--enable-debug-handlers=true");
        }
        if netns.is_none() && !args.iter().any(|a| a.starts_with("--netns")) {
            // The daemon applies kube-proxy's conntrack sysctls in the
            // namespace it programs; here that would be the machine's own.
            // Zero leaves every value as the kernel has it (a test's own
            // args come later and win).
            cmd.args(NO_CONNTRACK_SYSCTLS);
        }
        cmd.arg(format!("--metrics-bind-address={metrics}"))
            .arg(format!("--healthz-bind-address={healthz}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn daemon");
        Daemon { child, log, metrics, healthz }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        match http_async("GET", self.metrics, path, "").await {
            Ok((code, _, body)) => (code, body),
            Err(_) => (0, String::new()),
        }
    }

    /// Waits for /readyz.
    pub async fn wait_ready(&self) {
        let addr = self.metrics;
        let log = self.log.clone();
        let deadline = Instant::now() + patience();
        loop {
            if let Ok((200, _, _)) = http_async("GET", addr, "/readyz", "").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready within {:?}; log:\n{}",
                patience(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// POST /debug/barrier: everything on disk is programmed.
    pub async fn barrier(&self) -> String {
        let (code, _, body) =
            http_async("POST", self.metrics, "/debug/barrier?timeout=10s", "").await.expect("barrier");
        assert_eq!(code, 200, "barrier failed: {body}\nlog:\n{}", self.log_text());
        body
    }

    /// Sends SIGTERM and waits for the exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.exit_code().await
    }

    /// Waits for the daemon to exit and returns its code; `None` (and
    /// SIGKILL) when it still runs after the patience.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + patience();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a binary to completion: (exit code, stdout, stderr).
pub fn run(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(bin);
    if bin != Path::new("ip") && !args.iter().any(|a| a.starts_with("--netns")) {
        // As in `Daemon::start`: never the machine's own conntrack sysctls.
        cmd.args(NO_CONNTRACK_SYSCTLS);
    }
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run binary");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

pub const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.0.1.1]
  conditions: {ready: true}
  nodeName: node-a
"#;

pub const NODE_A: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 192.168.50.1}]
"#;

/// A network namespace made for one test (`swy-dmn-<pid>-<n>`, a
/// [`testkit::Netns`]), with loopback up; deleted on drop, whatever happened.
pub struct NetnsHandle {
    pub name: String,
    _guard: testkit::Netns,
}

impl NetnsHandle {
    pub fn create() -> NetnsHandle {
        let guard = testkit::Netns::for_test("dmn");
        NetnsHandle { name: guard.name().to_string(), _guard: guard }
    }

    pub fn ns(&self) -> proxy_core::NetNamespace {
        proxy_core::NetNamespace::named(&self.name)
    }

    /// An HTTP exchange from inside the namespace.
    pub async fn http(&self, method: &str, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
        let ns = self.ns();
        let (m, p) = (method.to_string(), path.to_string());
        ns.run_async(move || http(&m, addr, &p, "")).await?
    }

    /// Runs a command inside the namespace: (success, stdout).
    pub fn exec(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().expect("ip netns exec");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into())
    }
}

/// A LoadBalancer Service with externalTrafficPolicy Local, its healthCheckNodePort
/// and one ready endpoint on node-a.
pub fn lb_service(hc_port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: lb, namespace: prod}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  externalTrafficPolicy: Local
  healthCheckNodePort: {hc_port}
  ports: [{{name: http, port: 80, protocol: TCP, nodePort: 30080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: lb-1
  namespace: prod
  labels: {{kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: [10.0.1.1]
  conditions: {{ready: true}}
  nodeName: node-a
"#
    )
}

/// Upstream kube-proxy (the `./x reference` build) programming a namespace
/// (`mode`: iptables or nftables), reading a real API server through a relay
/// (the namespace cannot reach the root namespace's loopback). Stopped by
/// pid: [`KubeProxy::stop`] (SIGTERM, as a DaemonSet rollout does), or
/// SIGKILL on drop.
pub struct KubeProxy {
    pub child: Child,
    pub netns: proxy_core::NetNamespace,
    _relay: conformance::relay::Relay,
    pub log: PathBuf,
}

impl KubeProxy {
    pub async fn start(
        cp: &conformance::apiserver::ControlPlane,
        dir: &Path,
        ns: &NetnsHandle,
        mode: &str,
    ) -> KubeProxy {
        let bins = conformance::apiserver::ReferenceBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
        let netns = ns.ns();
        let target = cp.server().trim_start_matches("https://").parse().expect("API server address");
        let relay = conformance::relay::Relay::start(&netns, target).await.expect("relay");
        let kubeconfig = conformance::apisource::with_server(
            cp.kube_proxy_kubeconfig(),
            &format!("https://{}", relay.addr()),
            &dir.join(format!("kube-proxy-{}.kubeconfig", ns.name)),
        )
        .expect("kube-proxy kubeconfig");
        let mut ctx = proxy_core::BackendContext::new("node1", netns.clone());
        ctx.masquerade.cluster_cidrs = vec!["10.244.0.0/16".parse().expect("cidr")];
        let config = conformance::kubeproxy::configuration(mode, &ctx, &kubeconfig);
        let config_path = dir.join(format!("kube-proxy-{}.json", ns.name));
        std::fs::write(&config_path, config.to_string()).expect("write kube-proxy config");
        let log = dir.join(format!("kube-proxy-{}.log", ns.name));
        let out = std::fs::File::create(&log).expect("kube-proxy log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bins.kube_proxy())
            .arg(format!("--config={}", config_path.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn kube-proxy");
        KubeProxy { child, netns, _relay: relay, log }
    }

    /// Its /healthz code (0 when it does not answer).
    pub async fn healthz(&self) -> u16 {
        conformance::relay::http_get_in(&self.netns, conformance::kubeproxy::HEALTHZ, "/healthz")
            .await
            .map_or(0, |(code, _)| code)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM by pid (`ip netns exec` execs kube-proxy in place: the pid is
    /// kube-proxy's), then waits for it to exit, SIGKILL after the patience.
    pub async fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + patience();
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// deploy/base/rbac.yaml as shipped.
pub const RBAC: &str = include_str!("../../../deploy/base/rbac.yaml");

/// A real control plane (`conformance::apiserver`) with `deploy/base/rbac.yaml`
/// (its ClusterRole edited by `edit_role`) and `objects` (YAML) applied;
/// returns it with a kubeconfig for the ServiceAccount the RBAC binds.
pub async fn control_plane_with(
    edit_role: impl FnOnce(&mut serde_json::Value),
    objects: &str,
) -> (conformance::apiserver::ControlPlane, PathBuf) {
    use conformance::apiserver::{ControlPlane, ControlPlaneConfig, ReferenceBinaries};
    let bins = ReferenceBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let cp = ControlPlane::start(&bins, &ControlPlaneConfig::default()).await.unwrap_or_else(|e| panic!("{e}"));
    for doc in &rbac_with(edit_role) {
        cp.apply(doc).await.unwrap_or_else(|e| panic!("applying deploy/base/rbac.yaml: {e}\n{}", cp.log_tails()));
    }
    cp.apply_yaml(objects).await.unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = cp.service_account_kubeconfig("kube-system", "switchyard").await.unwrap_or_else(|e| panic!("{e}"));
    (cp, kubeconfig)
}

/// deploy/base/rbac.yaml's documents, its ClusterRole edited by `edit_role`.
pub fn rbac_with(edit_role: impl FnOnce(&mut serde_json::Value)) -> Vec<serde_json::Value> {
    let mut docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(RBAC).expect("deploy/base/rbac.yaml parses");
    edit_role(docs.iter_mut().find(|d| d["kind"] == "ClusterRole").expect("deploy/base/rbac.yaml has a ClusterRole"));
    docs
}

/// Node `node1` and Service `default/web` (ClusterIP 10.96.0.10:80) with one
/// ready endpoint, 10.0.1.1:8080 on node1: what the API-server tests start from.
pub const NODE1_WEB: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.0.1.1]
  conditions: {ready: true}
  nodeName: node1
"#;
