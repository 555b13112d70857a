//! Moving a node from upstream kube-proxy to switchyard (issue 14,
//! "Migration"), with the reference kube-proxy (`./x reference`) serving a
//! real API server's Service in a namespace of the test's own:
//!
//! - `switchyard --cleanup` removes what kube-proxy left in its iptables and
//!   nftables modes (plus kube-proxy-shaped rules replayed into the legacy
//!   iptables and IPv6 views, which one kube-proxy run does not fill), and
//!   leaves everything else alone;
//! - the swap: kube-proxy serves held connections and a stream of new ones,
//!   is stopped, switchyard starts with `--remove-kube-proxy-leftovers`; no
//!   held connection is cut, no new connection fails, no `KUBE-*` object
//!   remains. `proxy-daemon/README.md`'s migration section follows these steps.
//!
//! Ignored by default (they need the reference binaries): `./x test` runs
//! them in its `apiserver` tier, or
//! `./x reference && cargo test -p proxy-daemon --test migrate -- --ignored`.
#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use conformance::apiserver::ControlPlane;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

/// This node, and one Service whose endpoint is the pod of [`Lab`].
const OBJECTS: &str = NODE1_WEB;

const CLUSTER_IP: &str = "10.96.0.10:80";

/// Chains named `KUBE-*` that kubelet owns; kube-proxy duplicates
/// `KUBE-FIREWALL` (the anti-martian rule) and never removes it, and
/// neither does switchyard.
const KUBELET_CHAINS: &[&str] = &["KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"];

/// A control plane serving [`OBJECTS`], node1 with the address a kubelet
/// would report (kube-proxy takes its node IP from there).
async fn control_plane() -> (ControlPlane, std::path::PathBuf) {
    let (cp, kubeconfig) = control_plane_with(|_| {}, OBJECTS).await;
    let nodes: Api<Node> = Api::all(cp.admin_client());
    let status = serde_json::json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}]}});
    nodes.patch_status("node1", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    (cp, kubeconfig)
}

/// A node namespace and a pod namespace joined by a veth (made inside the
/// node namespace, its peer moved straight into the pod's: the root
/// namespace never sees it), with an echo server on the pod's 10.0.1.1:8080.
/// The Service range is routed to the pod, which takes it as local: a
/// connection to a ClusterIP gets as far as the nat OUTPUT hook, and one
/// that no rule rewrote is refused at once (nothing listens on port 80)
/// instead of hanging.
struct Lab {
    node: NetnsHandle,
    /// Held for its echo server; deleted with the lab.
    _pod: NetnsHandle,
}

impl Lab {
    fn create() -> Lab {
        let (node, pod) = (NetnsHandle::create(), NetnsHandle::create());
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        };
        ip(&["-n", &node.name, "link", "add", "swy-n", "type", "veth", "peer", "name", "swy-p", "netns", &pod.name]);
        ip(&["-n", &node.name, "addr", "add", "10.0.1.254/24", "dev", "swy-n"]);
        ip(&["-n", &node.name, "link", "set", "swy-n", "up"]);
        ip(&["-n", &node.name, "route", "add", "10.96.0.0/12", "via", "10.0.1.1", "dev", "swy-n"]);
        ip(&["-n", &pod.name, "addr", "add", "10.0.1.1/24", "dev", "swy-p"]);
        ip(&["-n", &pod.name, "link", "set", "swy-p", "up"]);
        ip(&["-n", &pod.name, "route", "add", "default", "via", "10.0.1.254"]);
        ip(&["-n", &pod.name, "route", "add", "local", "10.96.0.0/12", "dev", "lo"]);
        let listener = pod.ns().run(|| TcpListener::bind("10.0.1.1:8080")).unwrap().unwrap();
        // The server's threads end with the test process; the listener keeps
        // its namespace's sockets, not the namespace's name, alive.
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || echo(conn));
            }
        });
        Lab { node, _pod: pod }
    }

    /// A TCP connection from the node to the ClusterIP.
    fn connect(&self) -> std::io::Result<Conn> {
        let addr: SocketAddr = CLUSTER_IP.parse().unwrap();
        self.node.ns().run(move || Conn::open(addr))?
    }
}

fn echo(conn: TcpStream) {
    let Ok(mut w) = conn.try_clone() else { return };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if writeln!(w, "{line}").is_err() {
            return;
        }
    }
}

/// A client connection that echoes lines.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        // A missing DNAT fails at once (see [`Lab`]): the timeout is only
        // for a machine too loaded to answer.
        let s = TcpStream::connect_timeout(&addr, patience())?;
        s.set_read_timeout(Some(patience()))?;
        Ok(Conn { r: BufReader::new(s.try_clone()?), w: s })
    }

    /// One round trip: the line comes back.
    fn round_trip(&mut self, text: &str) -> std::io::Result<()> {
        writeln!(self.w, "{text}")?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        if line.trim_end() == text {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("sent {text:?}, got {line:?}")))
        }
    }
}

/// New connections, one after another, each with one round trip, from a
/// thread inside the node namespace until stopped: how many succeeded, and
/// every failure with when it happened.
struct Stream {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<(Instant, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(lab: &Lab) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let ns = lab.node.ns();
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            let addr: SocketAddr = CLUSTER_IP.parse().unwrap();
            ns.run(|| {
                let mut n = 0u64;
                while !s.load(Ordering::SeqCst) {
                    n += 1;
                    match Conn::open(addr).and_then(|mut c| c.round_trip(&format!("new {n}"))) {
                        Ok(()) => {
                            o.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => f.lock().unwrap().push((Instant::now(), e.to_string())),
                    }
                    // Pacing the workload (a few hundred connections a
                    // second at most, so that TIME_WAIT never runs out of
                    // ports), not a wait for anything.
                    #[allow(clippy::disallowed_methods, reason = "paces a workload thread; no convergence is awaited")]
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .unwrap();
        });
        Stream { stop, ok, failures, thread: Some(thread) }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits until `more` further connections succeeded.
    async fn wait_for_more(&self, more: usize, what: &str) {
        let want = self.ok() + more;
        eventually(what, || async move { self.ok() >= want }).await;
    }

    fn finish(mut self) -> Vec<(Instant, String)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.failures.lock().unwrap())
    }
}

/// Every kube-proxy object left in `ns`: `KUBE-*` chains and rules naming
/// them (kubelet's chains apart) in the nft and legacy iptables of both
/// families, the `kube-proxy` nftables tables, `kube-ipvs0`, `KUBE-*` ipsets.
fn kube_proxy_objects(ns: &NetnsHandle) -> Vec<String> {
    let mut found = Vec::new();
    for save in ["iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"] {
        let (_, text) = ns.exec(&[save]);
        for line in text.lines() {
            let kube = line
                .split(|c: char| c.is_whitespace() || c == ':' || c == '"')
                .any(|w| w.starts_with("KUBE-") && !KUBELET_CHAINS.contains(&w));
            if kube {
                found.push(format!("{save}: {line}"));
            }
        }
    }
    let (_, tables) = ns.exec(&["nft", "list", "tables"]);
    found.extend(tables.lines().filter(|l| l.contains("kube-proxy")).map(|l| format!("nft: {l}")));
    if ns.exec(&["ip", "link", "show", "kube-ipvs0"]).0 {
        found.push("link kube-ipvs0".into());
    }
    let (_, sets) = ns.exec(&["ipset", "list", "-n"]);
    found.extend(sets.lines().filter(|l| l.starts_with("KUBE-")).map(|l| format!("ipset {l}")));
    found
}

/// Objects that are not kube-proxy's, in every view the cleanup touches: a
/// chain of another program with a jump from a built-in chain (nft and
/// legacy, both families), kubelet's `KUBE-FIREWALL`, an nftables table.
const OTHERS_V4: &str = "*nat\n:OTHER-NAT - [0:0]\n-A OUTPUT -j OTHER-NAT\n-A OTHER-NAT -d 192.0.2.1/32 -j RETURN\nCOMMIT\n\
    *filter\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\n\
    -A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\nCOMMIT\n";
const OTHERS_V6: &str =
    "*nat\n:OTHER-NAT - [0:0]\n-A OUTPUT -j OTHER-NAT\n-A OTHER-NAT -d 2001:db8::1/128 -j RETURN\nCOMMIT\n";

fn restore(ns: &NetnsHandle, program: &str, payload: &str) {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, program, "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(payload.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program}: {}\n{payload}", String::from_utf8_lossy(&out.stderr));
}

fn add_others(ns: &NetnsHandle) {
    restore(ns, "iptables-nft-restore", OTHERS_V4);
    restore(ns, "iptables-legacy-restore", OTHERS_V4);
    restore(ns, "ip6tables-nft-restore", OTHERS_V6);
    restore(ns, "ip6tables-legacy-restore", OTHERS_V6);
    assert!(ns.exec(&["nft", "add", "table", "ip", "other"]).0);
    assert!(ns.exec(&["nft", "add", "chain", "ip", "other", "keep"]).0);
}

/// [`add_others`]'s objects are all still there.
fn assert_others_intact(ns: &NetnsHandle) {
    for (save, want) in [
        ("iptables-nft-save", &["-A OUTPUT -j OTHER-NAT", "-A OTHER-NAT -d 192.0.2.1/32 -j RETURN"][..]),
        ("iptables-legacy-save", &["-A OUTPUT -j OTHER-NAT", "-A OTHER-NAT -d 192.0.2.1/32 -j RETURN"][..]),
        ("ip6tables-nft-save", &["-A OUTPUT -j OTHER-NAT", "-A OTHER-NAT -d 2001:db8::1/128 -j RETURN"][..]),
        ("ip6tables-legacy-save", &["-A OUTPUT -j OTHER-NAT", "-A OTHER-NAT -d 2001:db8::1/128 -j RETURN"][..]),
    ] {
        let (_, text) = ns.exec(&[save]);
        for w in want {
            assert!(text.contains(w), "{save} lost {w:?}:\n{text}");
        }
        if save.starts_with("iptables") {
            for w in ["-A INPUT -j KUBE-FIREWALL", "block incoming localnet connections"] {
                assert!(text.contains(w), "{save} lost kubelet's {w:?}:\n{text}");
            }
        }
    }
    let (_, text) = ns.exec(&["nft", "list", "table", "ip", "other"]);
    assert!(text.contains("chain keep"), "the nftables table of another program went:\n{text}");
}

/// kube-proxy's iptables mode as its proxier writes it (the chain layout of
/// pkg/proxy/iptables, v1.37), for the views one kube-proxy run leaves
/// empty: it programs one iptables implementation only.
fn kube_proxy_shape(cluster_ip: &str, endpoint: &str) -> String {
    format!(
        "*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n\
         *nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n\
         :KUBE-PROXY-CANARY - [0:0]\n:KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]\n:KUBE-SEP-6E7XQMQ4RAYOWTTM - [0:0]\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-SERVICES -d {cluster_ip} -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-TCOU7JCQXEZGVUNU\n\
         -A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         -A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment \"default/web:http -> {endpoint}\" -j KUBE-SEP-6E7XQMQ4RAYOWTTM\n\
         -A KUBE-SEP-6E7XQMQ4RAYOWTTM -p tcp -m comment --comment \"default/web:http\" -m tcp -j DNAT --to-destination {endpoint}\n\
         COMMIT\n\
         *filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-NODEPORTS - [0:0]\n\
         :KUBE-PROXY-FIREWALL - [0:0]\n:KUBE-PROXY-CANARY - [0:0]\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         COMMIT\n"
    )
}

/// Waits until kube-proxy serves the Service (a connection through its rules works).
async fn wait_served_by_kube_proxy(lab: &Lab, kp: &KubeProxy) {
    let deadline = Instant::now() + patience() * 3;
    loop {
        let ok = lab.connect().and_then(|mut c| c.round_trip("hello")).is_ok();
        if ok {
            return;
        }
        // kube-proxy starts slower than switchyard (informers, then its
        // first full sync): three patiences, still a bound.
        assert!(Instant::now() < deadline, "kube-proxy did not serve {CLUSTER_IP}\n{}", kp.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cleanup(lab: &Lab) -> (Option<i32>, String) {
    let bin = switchyard_bin();
    let (code, out, err) =
        run(Path::new("ip"), &["netns", "exec", &lab.node.name, bin.to_str().unwrap(), "--cleanup"], &[]);
    (code, format!("{out}\n{err}"))
}

/// `switchyard --cleanup` after upstream kube-proxy's iptables and nftables
/// modes: nothing of kube-proxy's remains, in any iptables view or family,
/// and nothing else was touched. Failed before `--cleanup` knew kube-proxy's
/// objects (it left every `KUBE-*` chain and the `kube-proxy` table).
#[tokio::test]
#[ignore = "needs etcd, kube-apiserver and kube-proxy from `./x reference`; run by `./x test` (tier apiserver)"]
async fn cleanup_removes_what_kube_proxy_left_in_each_mode() {
    assert!(testkit::is_root(), "this test needs root and `ip netns`; ./x test runs it as root");
    let (cp, _) = control_plane().await;
    let dir = tempfile::tempdir().unwrap();
    for mode in ["iptables", "nftables"] {
        let lab = Lab::create();
        add_others(&lab.node);
        let mut kp = KubeProxy::start(&cp, dir.path(), &lab.node, mode).await;
        wait_served_by_kube_proxy(&lab, &kp).await;
        kp.stop().await;
        // The views this run of kube-proxy left empty, in its shape.
        restore(&lab.node, "iptables-legacy-restore", &kube_proxy_shape("10.96.0.10/32", "10.0.1.1:8080"));
        restore(&lab.node, "ip6tables-nft-restore", &kube_proxy_shape("fd00:96::10/128", "[fd00:1::1]:8080"));
        let before = kube_proxy_objects(&lab.node);
        // kube-proxy's nftables mode writes no iptables rules.
        let kinds: &[&str] = match mode {
            "iptables" => &["iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save"],
            _ => &["iptables-legacy-save", "ip6tables-nft-save"],
        };
        for kind in kinds {
            assert!(
                before.iter().any(|l| l.starts_with(kind)),
                "{mode}: nothing of kube-proxy's in {kind}: {before:#?}"
            );
        }
        if mode == "nftables" {
            assert!(before.iter().any(|l| l.starts_with("nft:")), "kube-proxy made no table: {before:#?}");
        }

        let (code, log) = cleanup(&lab);
        assert_eq!(code, Some(0), "{mode}: --cleanup failed:\n{log}");
        let after = kube_proxy_objects(&lab.node);
        assert!(after.is_empty(), "{mode}: kube-proxy's objects left by --cleanup: {after:#?}\n{log}");
        assert_others_intact(&lab.node);
        assert!(log.contains("removed kube-proxy's leftovers"), "{log}");
    }
}

/// The swap, as an operator does it (proxy-daemon/README.md, "Migrating
/// from kube-proxy"): kube-proxy in `kube_proxy_mode` serves the Service
/// with held connections and a stream of new ones; it is stopped (SIGTERM,
/// by pid) and switchyard started in the same namespace, in `mode`, with
/// `--remove-kube-proxy-leftovers`. No held connection is cut, no new
/// connection fails (at any point: kube-proxy's rules keep serving until
/// switchyard's first sync, and go only after it), and nothing of
/// kube-proxy's remains.
async fn swap(kube_proxy_mode: &str, mode: &str) {
    let (cp, kubeconfig) = control_plane().await;
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::create();
    let mut kp = KubeProxy::start(&cp, dir.path(), &lab.node, kube_proxy_mode).await;
    wait_served_by_kube_proxy(&lab, &kp).await;

    let mut held: Vec<Conn> = (0..8).map(|_| lab.connect().unwrap()).collect();
    for (i, c) in held.iter_mut().enumerate() {
        c.round_trip(&format!("held {i} before")).unwrap();
    }
    let stream = Stream::start(&lab);
    stream.wait_for_more(20, "new connections through kube-proxy").await;

    kp.stop().await;
    stream.wait_for_more(20, "new connections with kube-proxy stopped (its rules stay)").await;
    let args = [
        format!("--kubeconfig={}", kubeconfig.display()),
        "--hostname-override=node1".into(),
        format!("--netns={}", lab.node.name),
        format!("--proxy-mode={mode}"),
        "--cluster-cidr=10.244.0.0/16".into(),
        "--min-sync-period=50ms".into(),
        "--remove-kube-proxy-leftovers".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start(&switchyard_bin(), dir.path(), &args);
    d.wait_ready().await;
    eventually("switchyard removed kube-proxy's leftovers after its first sync", || {
        let done = kube_proxy_objects(&lab.node).is_empty() && d.log_text().contains("removed kube-proxy's leftovers");
        async move { done }
    })
    .await;
    let log = d.log_text();
    let (synced, removed) = (log.find("first sync done").unwrap(), log.find("removed kube-proxy's leftovers").unwrap());
    assert!(synced < removed, "leftovers removed before the first sync:\n{log}");
    stream.wait_for_more(50, "new connections through switchyard's rules alone").await;

    let failures = stream.finish();
    assert!(
        failures.is_empty(),
        "{} new connections failed during the swap, first: {:?}\nswitchyard log:\n{}\nkube-proxy log:\n{}",
        failures.len(),
        failures.first().map(|f| &f.1),
        d.log_text(),
        kp.log_text()
    );
    for (i, c) in held.iter_mut().enumerate() {
        c.round_trip(&format!("held {i} after")).unwrap_or_else(|e| panic!("held connection {i} was cut: {e}"));
    }
    let left = kube_proxy_objects(&lab.node);
    assert!(left.is_empty(), "kube-proxy's objects remain: {left:#?}");
}

#[tokio::test]
#[ignore = "needs etcd, kube-apiserver and kube-proxy from `./x reference`; run by `./x test` (tier apiserver)"]
async fn swap_from_kube_proxy_iptables_cuts_no_connection() {
    assert!(testkit::is_root(), "this test needs root and `ip netns`; ./x test runs it as root");
    swap("iptables", "iptables").await;
}

#[tokio::test]
#[ignore = "needs etcd, kube-apiserver and kube-proxy from `./x reference`; run by `./x test` (tier apiserver)"]
async fn swap_from_kube_proxy_nftables_cuts_no_connection() {
    assert!(testkit::is_root(), "this test needs root and `ip netns`; ./x test runs it as root");
    swap("nftables", "nftables").await;
}
