#![allow(dead_code, unused_imports, reason = "each test binary uses part of the lab")]
//! Shared lab for the root tests: real packets through the eBPF dataplane, in network namespaces this test
//! creates (`swy-bpf-<pid>-<n>-*`), with a cgroup it creates for the socket
//! hooks and a pin directory of its own under /sys/fs/bpf/switchyard/.
//! Everything is torn down by a guard on every exit path. Needs root (the
//! tests are `#[testkit::needs_root]`) and a kernel with BPF and cgroup v2
//! (skipped loudly otherwise). The addresses are testkit's star plan
//! (`testkit::plan`).
//!
//! Topology (one node, two pods, one outside client):
//!
//! ```text
//!  p1 (10.244.1.5) ─eth0══vp1─┐
//!  p2 (10.244.2.5) ─eth0══vp2─┤ node (192.168.0.10 on vext, ip_forward)
//!  ext (192.168.0.2) ─eth0══vext┘   TC ingress on vp1, vp2, vext; cgroup hooks
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use backend_ebpf::{EbpfConfig, EbpfDataplane};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_core::testing::{EndpointBuilder, ServiceBuilder, SliceBuilder, endpoint, initial_list};
use proxy_core::{
    BackendContext, ChangeTracker, Dataplane, MasqueradeConfig, NetNamespace, PlannerConfig, Snapshot, SyncRequest,
    TrackerConfig,
};
use testkit::{Netns, plan};

/// The node's InternalIP ([`testkit::plan::NODE_IP`]), as the tests write addresses.
pub const NODE_IP: &str = "192.168.0.10";

/// Why this machine cannot run the lab although we are root (the tests are
/// `#[testkit::needs_root]`: without root they are ignored, not run).
pub fn skip_reason() -> Option<String> {
    if cgroup_root().is_none() {
        return Some("no cgroup v2 mount".into());
    }
    None
}

pub fn cgroup_root() -> Option<PathBuf> {
    testkit::cgroup2_root()
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("run command");
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The namespaces, cgroup and pins of one test; removed on drop.
pub struct Lab {
    pub prefix: String,
    /// A bpffs instance of this test's own (mounted at a fresh directory).
    pub bpffs: PathBuf,
    pub cgroup: PathBuf,
    pub pin: PathBuf,
    /// The lab's namespaces (node first), deleted when their guards drop.
    namespaces: Vec<Netns>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl Lab {
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn netns(&self, name: &str) -> NetNamespace {
        NetNamespace::named(&self.ns(name))
    }

    pub fn new() -> Lab {
        let prefix = testkit::netns::unique_prefix("bpf");
        let cgroup = cgroup_root().expect("checked").join(&prefix);
        // Pins go to a bpffs of our own, so that parallel runs never collide
        // and unmounting frees whatever a failed run left.
        let bpffs = std::env::temp_dir().join(format!("{prefix}-bpffs"));
        std::fs::create_dir_all(&bpffs).expect("create bpffs dir");
        sh(&["mount", "-t", "bpf", "bpf", bpffs.to_str().expect("utf-8")]);
        let pin = bpffs.join("switchyard");
        let mut lab = Lab {
            prefix,
            bpffs,
            cgroup,
            pin,
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        for ns in ["node", "p1", "p2", "ext"] {
            lab.namespaces.push(Netns::create(lab.ns(ns)).unwrap_or_else(|e| panic!("{e}")));
        }
        let [node, p1, p2, ext] = &lab.namespaces[..] else { unreachable!("four namespaces") };
        for (dev, peer, node_addr, addr) in [
            ("vp1", p1, plan::pod_gateway(1), plan::pod_ip(1)),
            ("vp2", p2, plan::pod_gateway(2), plan::pod_ip(2)),
            ("vext", ext, plan::NODE_IP, plan::EXT_IP),
        ] {
            plan::spoke(node, dev, peer, &plan::cidr(node_addr, 24), &plan::cidr(addr, 24))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        plan::forward(node).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(&lab.cgroup).expect("create test cgroup");
        lab
    }

    /// A pod created while the backend runs: namespace `<prefix>-<pod>`,
    /// its `eth0` paired with `v<pod>` on the node, `10.244.<subnet>.5/24`
    /// behind the node's `10.244.<subnet>.1` (`ip -n NODE link add vPOD type
    /// veth peer name eth0 netns POD`, as a CNI plugin does: `plan::spoke`).
    pub fn add_pod(&mut self, pod: &str, subnet: u8) {
        let peer = Netns::create(self.ns(pod)).unwrap_or_else(|e| panic!("{e}"));
        let (gw, ip) = (plan::cidr(plan::pod_gateway(subnet), 24), plan::cidr(plan::pod_ip(subnet), 24));
        plan::spoke(&self.namespaces[0], &format!("v{pod}"), &peer, &gw, &ip).unwrap_or_else(|e| panic!("{e}"));
        self.namespaces.push(peer);
    }

    /// An echo server in a pod: answers "<pod> <peer address>" over TCP 8080 and UDP 5353.
    pub fn serve(&mut self, pod: &'static str) {
        self.serve_on(pod, 8080, Some(5353));
    }

    /// The same answer on another TCP port only (the benchmark gives each
    /// measurement its own server port, so that no measurement meets the
    /// TIME_WAIT connections of another).
    pub fn serve_tcp(&mut self, pod: &'static str, port: u16) {
        self.serve_on(pod, port, None);
    }

    fn serve_on(&mut self, pod: &'static str, tcp_port: u16, udp_port: Option<u16>) {
        let ns = self.netns(pod);
        let stop = self.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.servers.push(std::thread::spawn(move || {
            let f = ns.path().map(std::fs::File::open).expect("named").expect("open netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let tcp = TcpListener::bind(("0.0.0.0", tcp_port)).expect("bind tcp");
            let udp = udp_port.map(|p| UdpSocket::bind(("0.0.0.0", p)).expect("bind udp"));
            tx.send(()).expect("ready");
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::SeqCst) {
                let mut fds = [
                    libc::pollfd { fd: tcp.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                    libc::pollfd { fd: udp.as_ref().map_or(-1, |u| u.as_raw_fd()), events: libc::POLLIN, revents: 0 },
                ];
                // SAFETY: two pollfds owned by this frame (a negative fd is ignored).
                if unsafe { libc::poll(fds.as_mut_ptr(), 2, 20) } <= 0 {
                    continue;
                }
                if fds[0].revents & libc::POLLIN != 0
                    && let Ok((mut s, peer)) = tcp.accept()
                {
                    let _ = s.write_all(format!("{pod} {peer}\n").as_bytes());
                }
                if fds[1].revents & libc::POLLIN != 0
                    && let Some(udp) = &udp
                    && let Ok((_, peer)) = udp.recv_from(&mut buf)
                {
                    let _ = udp.send_to(format!("{pod} {peer}\n").as_bytes(), peer);
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(5)).expect("server ready");
    }

    /// A request/response server in a pod on TCP 8081: every byte a
    /// connection sends comes back (a thread per connection).
    pub fn serve_rr(&mut self, pod: &'static str) {
        let ns = self.netns(pod);
        let stop = self.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.servers.push(std::thread::spawn(move || {
            let f = ns.path().map(std::fs::File::open).expect("named").expect("open netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let tcp = TcpListener::bind("0.0.0.0:8081").expect("bind rr");
            tx.send(()).expect("ready");
            while !stop.load(Ordering::SeqCst) {
                let mut fds = [libc::pollfd { fd: tcp.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
                // SAFETY: one valid pollfd owned by this frame.
                if unsafe { libc::poll(fds.as_mut_ptr(), 1, 20) } <= 0 {
                    continue;
                }
                if let Ok((mut s, _)) = tcp.accept() {
                    let _ = s.set_nodelay(true);
                    std::thread::spawn(move || {
                        let mut b = [0u8; 64];
                        while let Ok(n) = s.read(&mut b) {
                            if n == 0 || s.write_all(&b[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(5)).expect("rr server ready");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
        // Whatever the test left (cleanup() should leave nothing), inside the
        // node namespace: never touch the root namespace's interfaces.
        let cfg = EbpfConfig { pin_path: self.pin.clone(), ..EbpfConfig::default() };
        let _ = self.netns("node").run(move || backend_ebpf::cleanup::cleanup(&cfg));
        // The namespaces go first (their guards), then the cgroup and the bpffs.
        self.namespaces.clear();
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}

/// What a client saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// (pod, the client address it saw)
    Reply(String, IpAddr),
    Refused,
    TimedOut,
    Other(String),
}

pub fn parse_reply(s: &str) -> Seen {
    let mut it = s.split_whitespace();
    match (it.next(), it.next().and_then(|a| a.parse::<SocketAddr>().ok())) {
        (Some(pod), Some(addr)) => Seen::Reply(pod.to_string(), addr.ip()),
        _ => Seen::Other(s.to_string()),
    }
}

pub fn tcp_probe(ns: &NetNamespace, to: &str) -> Seen {
    let to: SocketAddr = to.parse().expect("addr");
    ns.run(move || match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut out = String::new();
            match s.read_to_string(&mut out) {
                Ok(_) => parse_reply(&out),
                Err(e) => Seen::Other(format!("read: {e}")),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Seen::Refused,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Seen::TimedOut,
        Err(e) => Seen::Other(e.to_string()),
    })
    .expect("enter netns")
}

pub fn udp_probe(ns: &NetNamespace, to: &str) -> Seen {
    let to: SocketAddr = to.parse().expect("addr");
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect(to).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let _ = s.send(b"ping");
        let mut buf = [0u8; 512];
        match s.recv(&mut buf) {
            Ok(n) => parse_reply(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Seen::Refused,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Seen::TimedOut
            }
            Err(e) => Seen::Other(e.to_string()),
        }
    })
    .expect("enter netns")
}

/// A TCP probe from a fixed source port (SO_REUSEADDR), as a client that
/// reuses a port across destinations.
pub fn tcp_probe_from(ns: &NetNamespace, to: &str, sport: u16) -> Seen {
    let to: SocketAddr = to.parse().expect("addr");
    ns.run(move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        s.set_reuse_address(true).expect("SO_REUSEADDR");
        s.bind(&SocketAddr::from(([0, 0, 0, 0], sport)).into()).expect("bind");
        match s.connect_timeout(&to.into(), Duration::from_secs(2)) {
            Ok(()) => {
                let mut s = TcpStream::from(s);
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut out = String::new();
                match s.read_to_string(&mut out) {
                    Ok(_) => parse_reply(&out),
                    Err(e) => Seen::Other(format!("read: {e}")),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Seen::Refused,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Seen::TimedOut,
            Err(e) => Seen::Other(e.to_string()),
        }
    })
    .expect("enter netns")
}

/// A UDP probe from a fixed source port: every call is the same flow.
pub fn udp_probe_from(ns: &NetNamespace, to: &str, sport: u16) -> Seen {
    let to: SocketAddr = to.parse().expect("addr");
    ns.run(move || {
        let s = UdpSocket::bind(("0.0.0.0", sport)).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let _ = s.send_to(b"ping", to);
        let mut buf = [0u8; 512];
        match s.recv(&mut buf) {
            Ok(n) => parse_reply(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Seen::Refused,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Seen::TimedOut
            }
            Err(e) => Seen::Other(e.to_string()),
        }
    })
    .expect("enter netns")
}

/// Environment variable that turns a re-executed test binary into the host-network client.
pub const HOST_CLIENT_ENV: &str = "SWITCHYARD_EBPF_HOST_CLIENT";

/// A host-network client: this test binary, re-executed as a process in
/// the node namespace and the test cgroup (so that the socket hooks see
/// it), running only its `host_client` test, which calls [`host_client_main`].
/// No shell or other tool needed (the VM has none).
pub fn host_probe(lab: &Lab, to: &str) -> Seen {
    let procs = lab.cgroup.join("cgroup.procs");
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = lab.netns("node").command(exe).expect("command");
    cmd.args(["--exact", "host_client", "--nocapture", "--test-threads=1"]).env(HOST_CLIENT_ENV, to);
    // SAFETY: only a write(2) to cgroup.procs between fork and exec.
    unsafe {
        cmd.pre_exec(move || std::fs::write(&procs, b"0"));
    }
    let out = cmd.output().expect("run host client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find_map(|l| l.split_once("SWY-CLIENT ").map(|(_, v)| v)) {
        Some("refused") => Seen::Refused,
        Some("timeout") => Seen::TimedOut,
        Some(reply) if reply.starts_with("reply ") => parse_reply(&reply["reply ".len()..]),
        Some(other) => Seen::Other(other.to_string()),
        None => Seen::Other(format!("{:?}: {stdout} {}", out.status, String::from_utf8_lossy(&out.stderr))),
    }
}

/// The client side of [`host_probe`]: connects to the address in
/// [`HOST_CLIENT_ENV`] and prints one `SWY-CLIENT …` line. Does nothing
/// when the variable is unset (an ordinary test run).
#[allow(clippy::print_stdout, reason = "the parent reads the verdict from stdout")]
pub fn host_client_main() {
    let Ok(to) = std::env::var(HOST_CLIENT_ENV) else { return };
    let to: SocketAddr = to.parse().expect("addr");
    let verdict = match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut out = String::new();
            match s.read_to_string(&mut out) {
                Ok(_) => format!("reply {}", out.trim()),
                Err(e) => format!("read: {e}"),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "timeout".to_string(),
        Err(e) => e.to_string(),
    };
    println!("SWY-CLIENT {verdict}");
}

pub fn snapshot(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Arc<Snapshot> {
    let mut planner = PlannerConfig::new("node-a");
    planner.masquerade = MasqueradeConfig { all: false, cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")] };
    let mut cfg = TrackerConfig::new(planner);
    cfg.wait_for_node = false;
    let mut tracker = ChangeTracker::new(cfg);
    for ev in initial_list(services, slices, None) {
        tracker.apply(ev);
    }
    tracker.snapshot()
}

pub fn slice(name: &str, service: &str, port: i32, proto: &str, eps: Vec<EndpointBuilder>) -> EndpointSlice {
    let mut s = SliceBuilder::new("default", name, service).port("", port, proto);
    for ep in eps {
        s = s.endpoint(ep);
    }
    s.build()
}

/// Slices the benchmark uses: one endpoint serving ports `http` and 8081 ("rr").
pub struct SliceBuilderExt;

impl SliceBuilderExt {
    pub fn two_ports(name: &str, service: &str, ep: &str, http: i32) -> EndpointSlice {
        SliceBuilder::new("default", name, service)
            .port("http", http, "TCP")
            .port("rr", 8081, "TCP")
            .endpoint(endpoint(ep).node("node-a"))
            .build()
    }
}

pub fn world() -> Arc<Snapshot> {
    let p1 = || endpoint("10.244.1.5").node("node-a");
    let p2 = || endpoint("10.244.2.5").node("node-a");
    snapshot(
        vec![
            ServiceBuilder::new("default", "web", "10.96.0.10").node_port("", 80, "TCP", 30080).build(),
            ServiceBuilder::new("default", "dns", "10.96.0.53").port("", 53, "UDP").build(),
            ServiceBuilder::new("default", "empty", "10.96.0.40").port("", 80, "TCP").port("u", 53, "UDP").build(),
            ServiceBuilder::new("default", "both", "10.96.0.20").port("", 80, "TCP").build(),
            ServiceBuilder::new("default", "sticky", "10.96.0.30").port("", 80, "TCP").affinity(Some(60)).build(),
        ],
        vec![
            slice("web-1", "web", 8080, "TCP", vec![p1()]),
            slice("dns-1", "dns", 5353, "UDP", vec![p2()]),
            slice("both-1", "both", 8080, "TCP", vec![p1(), p2()]),
            slice("sticky-1", "sticky", 8080, "TCP", vec![p1(), p2()]),
        ],
    )
}

pub fn dataplane(lab: &Lab) -> EbpfDataplane {
    let mut ctx = BackendContext::new("node-a", lab.netns("node"));
    ctx.node_ips = vec![NODE_IP.parse().expect("ip")];
    let cfg = EbpfConfig { pin_path: lab.pin.clone(), cgroup_path: Some(lab.cgroup.clone()), ..EbpfConfig::default() };
    EbpfDataplane::new(ctx, cfg)
}

pub fn request(snapshot: Arc<Snapshot>, full: bool) -> SyncRequest {
    SyncRequest { snapshot, changed: Arc::default(), full }
}

/// A partial sync from `prev` to `next`, naming the Services whose plan
/// differs (or that went away), as the proxier does.
pub fn changes(prev: &Snapshot, next: Arc<Snapshot>) -> SyncRequest {
    let mut changed = std::collections::BTreeSet::new();
    for s in prev.services() {
        if next.service(s.name()) != Some(s) {
            changed.insert(s.name().clone());
        }
    }
    for s in next.services() {
        if prev.service(s.name()).is_none() {
            changed.insert(s.name().clone());
        }
    }
    SyncRequest { snapshot: next, changed: Arc::new(changed), full: false }
}

pub fn pods_hit(lab: &Lab, client: &str, to: &str, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|_| match tcp_probe(&lab.netns(client), to) {
            Seen::Reply(pod, _) => pod,
            other => panic!("{client} -> {to}: {other:?}"),
        })
        .collect()
}

pub use testkit::{eventually_sync as eventually, patience};

/// Raw bpf(2) for what a test does to the datapath from outside the backend
/// (an operator's `bpftool link detach`, another tool's programs).
pub mod outside {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::path::Path;

    #[repr(C, align(8))]
    struct Attr([u8; 128]);

    fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
        // SAFETY: a zeroed bpf_attr of the size passed; pointers in it outlive the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len() as libc::c_uint) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
    }

    fn put(a: &mut Attr, off: usize, bytes: &[u8]) {
        a.0[off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// `bpftool link detach pinned PATH`, then `rm PATH`: the link stays an
    /// object (the backend may hold it) but runs nowhere.
    pub fn detach_pinned_link(pin: &Path) -> io::Result<()> {
        let fd = backend_ebpf::sys::obj_get(pin)?;
        let mut a = Attr([0; 128]);
        put(&mut a, 0, &(fd.as_raw_fd() as u32).to_ne_bytes());
        bpf(34 /* BPF_LINK_DETACH */, &mut a)?;
        std::fs::remove_file(pin)
    }

    /// A TC program that only passes packets on (`return TCX_NEXT`),
    /// attached as a TCX link at the end of `ifindex`'s ingress: someone
    /// else's program. Must run inside the interface's namespace.
    pub fn attach_other_tcx(ifindex: u32) -> io::Result<OwnedFd> {
        // r0 = -1 (TCX_NEXT); exit
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = b"GPL\0";
        let mut a = Attr([0; 128]);
        put(&mut a, 0, &3u32.to_ne_bytes()); // BPF_PROG_TYPE_SCHED_CLS
        put(&mut a, 4, &2u32.to_ne_bytes()); // insn_cnt
        put(&mut a, 8, &(insns.as_ptr() as u64).to_ne_bytes());
        put(&mut a, 16, &(license.as_ptr() as u64).to_ne_bytes());
        let prog = bpf(5 /* BPF_PROG_LOAD */, &mut a)?;
        // SAFETY: a descriptor the kernel just returned.
        let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
        let mut a = Attr([0; 128]);
        put(&mut a, 0, &(prog.as_raw_fd() as u32).to_ne_bytes());
        put(&mut a, 4, &ifindex.to_ne_bytes());
        put(&mut a, 8, &backend_ebpf::sys::attach_type::TCX_INGRESS.to_ne_bytes());
        let link = bpf(28 /* BPF_LINK_CREATE */, &mut a)?;
        // SAFETY: as above; the link holds the program.
        Ok(unsafe { OwnedFd::from_raw_fd(link as i32) })
    }
}

/// Detaches our TC programs from `ifname` in the lab's node from outside
/// the backend, as an operator or another agent would: TCX links detached
/// and unpinned, or (before TCX) the clsact filters deleted.
pub fn detach_tc_from_outside(lab: &Lab, ifname: &str, hooks: &[&str]) {
    let links = lab.pin.join("links");
    let ifname = ifname.to_string();
    let hooks: Vec<String> = hooks.iter().map(|h| h.to_string()).collect();
    lab.netns("node")
        .run(move || {
            for (name, hook, prefix) in backend_ebpf::client::TC_PROGRAMS {
                if !hooks.iter().any(|h| h == prefix) {
                    continue;
                }
                if backend_ebpf::client::use_tcx() {
                    let pin = links.join(format!("{prefix}{ifname}"));
                    outside::detach_pinned_link(&pin).unwrap_or_else(|e| panic!("detach {}: {e}", pin.display()));
                } else {
                    aya::programs::tc::qdisc_detach_program(&ifname, hook, name)
                        .unwrap_or_else(|e| panic!("tc filter del dev {ifname}: {e}"));
                }
            }
        })
        .expect("enter node namespace");
}
