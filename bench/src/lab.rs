//! The benchmark lab: four network namespaces made for one measurement,
//! leaner than the conformance lab (no agents, no second node), so that the
//! only work on a probe's path is the dataplane's.
//!
//! ```text
//!  client (10.244.1.5) ─eth0══vc─┐
//!  pod    (10.244.2.5, and the   │ node (the dataplane, ip_forward; 10.244.1.1,
//!          endpoint addresses    ├─      10.244.2.1, 192.168.0.10 = InternalIP)
//!          10.244.2.10-.29) ═vp──┤
//!  ext    (192.168.0.2) ─eth0══vx┘
//! ```
//!
//! The addresses are testkit's star plan (`testkit::plan`), shared with the
//! eBPF backend's tests; the namespaces are `testkit::Netns` guards.
//!
//! Names are `swy-bench-<pid>-<n>-<host>`. Everything a lab creates (namespaces,
//! a cgroup, a private bpffs mount) is recorded in a process-wide list that
//! the `Drop` guard and the signal handler both empty, so a lab is removed on
//! success, failure, panic and Ctrl-C. Nothing is done in the root
//! namespace: every `ip` call names a lab namespace.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use proxy_core::NetNamespace;
use testkit::{Netns, plan};

pub use testkit::cgroup2_root;
pub use testkit::plan::{CLUSTER_CIDR, NODE_IP};
pub const POD_PORT: u16 = 8080;
/// The pod listener's accept queue: more than one connect series (2,200
/// connections back to back), so a slow server thread never drops a SYN.
pub const LISTEN_BACKLOG: i32 = 4096;
/// Endpoint addresses the pod answers on: `.10`-`.19` serve the first
/// Service, `.20`/`.21` alternate as the last Service's single endpoint.
pub fn pod_endpoint(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 2, 10 + i)
}

/// Whether `ip` is one of the real pod's addresses ([`pod_endpoint`]).
pub fn is_pod_address(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    (a, b, c) == (10, 244, 2)
}

/// What must be undone if the process is interrupted: namespaces, cgroups,
/// bpffs mounts, child processes (by pid).
#[derive(Default)]
pub struct Leftovers {
    pub namespaces: BTreeSet<String>,
    pub cgroups: BTreeSet<PathBuf>,
    pub mounts: BTreeSet<PathBuf>,
    pub pids: BTreeSet<i32>,
}

pub static LEFTOVERS: Mutex<Leftovers> = Mutex::new(Leftovers {
    namespaces: BTreeSet::new(),
    cgroups: BTreeSet::new(),
    mounts: BTreeSet::new(),
    pids: BTreeSet::new(),
});

fn leftovers() -> std::sync::MutexGuard<'static, Leftovers> {
    LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Undoes everything recorded (signal path): kills children by pid, unmounts,
/// deletes namespaces and cgroups.
pub fn undo_all() {
    let mut l = leftovers();
    for pid in std::mem::take(&mut l.pids) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    for m in std::mem::take(&mut l.mounts) {
        unmount(&m);
    }
    for ns in std::mem::take(&mut l.namespaces) {
        let _ = quiet("ip", &["netns", "del", &ns]);
    }
    for cg in std::mem::take(&mut l.cgroups) {
        let _ = std::fs::remove_dir(&cg);
    }
}

fn unmount(path: &Path) {
    let _ = quiet("umount", &[&path.display().to_string()]);
    let _ = std::fs::remove_dir(path);
}

/// Runs a command; Err with its stderr when it fails.
pub fn quiet(program: &str, args: &[&str]) -> Result<(), String> {
    testkit::run(program, args).map_err(|e| e.to_string())
}

/// Removes labs of earlier runs killed with SIGKILL (their pid is gone).
pub fn collect_stale() -> Vec<String> {
    testkit::netns::collect_stale("bench")
}

/// Pins the calling thread to one CPU (ignored when it does not exist).
pub fn pin_to(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu).is_ok() {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        }
    }
}

/// Makes `cmd` start inside the namespace `netns` (an open
/// `/run/netns/NAME`), pinned to `cpu`, with every signal unblocked: the
/// harness blocks SIGINT/SIGTERM for its signal thread, and the daemon or
/// kube-proxy it starts must receive them.
pub fn spawn_inside(cmd: &mut std::process::Command, netns: std::fs::File, cpu: Option<usize>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe calls:
    // setns(2), sched_setaffinity(2), sigprocmask(2).
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            pin_to(cpu);
            let _ = nix::sys::signal::SigSet::all().thread_unblock();
            Ok(())
        });
    }
}

/// Which CPUs the client and the dataplane side use: different ones when
/// the machine has two or more.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Cpus {
    pub client: Option<usize>,
    pub dataplane: Option<usize>,
}

impl Cpus {
    pub fn detect() -> Cpus {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        if n >= 2 { Cpus { client: Some(0), dataplane: Some(1) } } else { Cpus { client: None, dataplane: None } }
    }
}

/// One lab.
pub struct Lab {
    pub prefix: String,
    /// A cgroup v2 directory of this lab (empty), for cgroup-attached BPF.
    pub cgroup: Option<PathBuf>,
    /// A private bpffs mount of this lab, when asked for.
    pub bpffs: Option<PathBuf>,
    pub cpus: Cpus,
    namespaces: Vec<Netns>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl Lab {
    /// Builds the namespaces and starts the pod's echo server. Needs root.
    pub fn create(cpus: Cpus, with_bpffs: bool) -> Result<Lab, String> {
        let prefix = format!("{}-", testkit::netns::unique_prefix("bench"));
        let mut lab = Lab {
            prefix,
            cgroup: None,
            bpffs: None,
            cpus,
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            server: None,
        };
        lab.wire()?;
        if let Some(root) = cgroup2_root() {
            let dir = root.join(lab.prefix.trim_end_matches('-'));
            if std::fs::create_dir(&dir).is_ok() {
                leftovers().cgroups.insert(dir.clone());
                lab.cgroup = Some(dir);
            }
        }
        if with_bpffs {
            let dir = std::env::temp_dir().join(format!("{}bpffs", lab.prefix));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            quiet("mount", &["-t", "bpf", "bpf", &dir.display().to_string()])?;
            leftovers().mounts.insert(dir.clone());
            lab.bpffs = Some(dir);
        }
        lab.server = Some(lab.start_server()?);
        Ok(lab)
    }

    pub fn ns_name(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    pub fn netns(&self, host: &str) -> NetNamespace {
        NetNamespace::named(&self.ns_name(host))
    }

    /// Creates a namespace of the lab; its guard is the last in `namespaces`.
    fn add_ns(&mut self, host: &str) -> Result<(), String> {
        let name = self.ns_name(host);
        // Recorded before creation: the signal path removes it even if we
        // are interrupted between the two.
        leftovers().namespaces.insert(name.clone());
        self.namespaces.push(Netns::create(name).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn wire(&mut self) -> Result<(), String> {
        self.add_ns("node")?;
        for (dev, host, node_addr, addr) in [
            ("vc", "client", plan::pod_gateway(1), plan::pod_ip(1)),
            ("vp", "pod", plan::pod_gateway(2), plan::pod_ip(2)),
            ("vx", "ext", plan::NODE_IP, plan::EXT_IP),
        ] {
            self.add_ns(host)?;
            let (node, peer) = (&self.namespaces[0], &self.namespaces[self.namespaces.len() - 1]);
            plan::spoke(node, dev, peer, &plan::cidr(node_addr, 24), &plan::cidr(addr, 24))
                .map_err(|e| e.to_string())?;
        }
        let node = self.ns_name("node");
        let pod = self.ns_name("pod");
        for i in 0..20 {
            quiet("ip", &["-n", &pod, "addr", "add", &format!("{}/32", pod_endpoint(i)), "dev", "eth0"])?;
        }
        // Sysctls of the lab's own namespaces only (`ip netns exec` scopes them).
        quiet("ip", &["netns", "exec", &node, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for host in ["node", "client", "pod", "ext"] {
            let ns = self.ns_name(host);
            // Probes before a Service exists must fail fast with an ICMP
            // error, not wait for a SYN timeout: no ICMP rate limits here.
            let _ = quiet("ip", &["netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"]);
            let _ = quiet("ip", &["netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.icmp_msgs_per_sec=1000000"]);
            let _ = quiet("ip", &["netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.icmp_msgs_burst=1000000"]);
        }
        let somaxconn = format!("net.core.somaxconn={LISTEN_BACKLOG}");
        let _ = quiet("ip", &["netns", "exec", &self.ns_name("pod"), "sysctl", "-qw", &somaxconn]);
        Ok(())
    }

    /// The pod's server on every address, port 8080 (see [`serve_one`]).
    fn start_server(&self) -> Result<JoinHandle<()>, String> {
        let ns = self.netns("pod");
        let stop = self.stop.clone();
        let cpu = self.cpus.dataplane;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let listener = ns.run(|| TcpListener::bind(("0.0.0.0", POD_PORT))).map_err(|e| e.to_string());
            let listener = match listener {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            // std listens with a backlog of 128. The connect probe opens
            // 2,200 connections back to back, and a server thread that a
            // loaded CPU delays for a moment overflowed that queue: the
            // kernel dropped the SYN, and the client waited a second for
            // its retransmit (measured: every SYN retransmit in the data-plane
            // rows was one of these `ListenOverflows`, the pod IP row's too).
            // Calling listen(2) again only raises the backlog, capped by the
            // pod namespace's `net.core.somaxconn` (set in `create`).
            // SAFETY: a valid listening socket fd.
            if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
                let _ = tx.send(Err(format!("listen: {}", std::io::Error::last_os_error())));
                return;
            }
            pin_to(cpu);
            let _ = tx.send(Ok(()));
            while !stop.load(Ordering::Relaxed) {
                // poll(2) wakes at once on a connection; the timeout only
                // bounds how long a stop request waits.
                let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd, count 1.
                let r = unsafe { libc::poll(&mut pfd, 1, 100) };
                if r <= 0 {
                    continue;
                }
                if let Ok((stream, _)) = listener.accept() {
                    serve_one(stream);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(format!("pod server: {e}")),
            Err(_) => Err("pod server did not start".into()),
        }
    }

    fn teardown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
        let mut l = leftovers();
        if let Some(m) = self.bpffs.take() {
            unmount(&m);
            l.mounts.remove(&m);
        }
        for ns in self.namespaces.drain(..).rev() {
            l.namespaces.remove(ns.name());
            let _ = ns.delete();
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = std::fs::remove_dir(&cg);
            l.cgroups.remove(&cg);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// One connection to the pod: first byte `E` → answer the address the
/// client reached (the endpoint after DNAT) and close; `S` → sink until EOF;
/// anything else (a connect-only probe closing with RST) → close.
fn serve_one(mut stream: std::net::TcpStream) {
    use std::io::{Read, Write};
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut first = [0u8; 1];
    match stream.read(&mut first) {
        Ok(1) if first[0] == b'E' => {
            let local = stream.local_addr().map(|a| a.ip().to_string()).unwrap_or_default();
            let _ = stream.write_all(format!("{local}\n").as_bytes());
        }
        Ok(1) if first[0] == b'S' => {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
        _ => {}
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Runs `f` on a new thread inside `ns`, pinned to `cpu`, and waits for it.
pub fn in_ns<T: Send, F: FnOnce() -> T + Send>(ns: &NetNamespace, cpu: Option<usize>, f: F) -> Result<T, String> {
    ns.run(|| {
        pin_to(cpu);
        f()
    })
    .map_err(|e| format!("entering {}: {e}", ns.label()))
}

/// A socket address on the ClusterIP port.
pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}
