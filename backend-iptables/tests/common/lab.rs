//! A throwaway lab of network namespaces (root only), shared by the
//! integration tests and the benchmark.
//!
//! ```text
//!   client (192.168.0.100) ── node (192.168.0.2 | 10.180.0.1 | 10.180.1.1) ── pod1 (10.180.0.10)
//!                                                                        └── pod2 (10.180.1.10)
//! ```
//! Names are `swy-ipt-<pid>-<n>-<role>`; everything is deleted on drop.

#![allow(dead_code, reason = "each user needs a different part")]
#![allow(clippy::unwrap_used, reason = "a broken lab is a failed test")]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use backend_iptables::{IptablesDataplane, Variant};
use nix::sched::{CloneFlags, setns};
use proxy_core::{BackendContext, FamilySet, IpFamily, MasqueradeConfig, NetNamespace};
use testkit::Netns;

fn ip(args: &[&str]) {
    testkit::ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// The namespaces of one test ([`testkit::Netns`] guards): deleted on drop,
/// also when the test panics.
pub struct Lab {
    prefix: String,
    created: Vec<Netns>,
}

impl Lab {
    pub fn new() -> Lab {
        let prefix = testkit::netns::unique_prefix("ipt");
        let mut lab = Lab { prefix, created: Vec::new() };
        for role in ["node", "pod1", "pod2", "client"] {
            let ns = Netns::create(lab.name(role)).unwrap_or_else(|e| panic!("{e}"));
            lab.created.push(ns);
        }
        let (node, pod1, pod2, client) = (lab.name("node"), lab.name("pod1"), lab.name("pod2"), lab.name("client"));
        // Links are created inside the node namespace and their peers moved out: the root namespace is never touched.
        // IPv6 alongside: fd00:180::/64 and fd00:181::/64 for the pods, fd00:1::/64 to the client.
        for (iface, peer_ns, node_addr, peer_addr, node6, peer6) in [
            ("vpod1", &pod1, "10.180.0.1/24", "10.180.0.10/24", "fd00:180::1/64", "fd00:180::10/64"),
            ("vpod2", &pod2, "10.180.1.1/24", "10.180.1.10/24", "fd00:181::1/64", "fd00:181::10/64"),
            ("vclient", &client, "192.168.0.2/24", "192.168.0.100/24", "fd00:1::2/64", "fd00:1::100/64"),
        ] {
            ip(&["-n", &node, "link", "add", iface, "type", "veth", "peer", "name", "eth0", "netns", peer_ns]);
            ip(&["-n", &node, "addr", "add", node_addr, "dev", iface]);
            ip(&["-n", &node, "addr", "add", node6, "dev", iface, "nodad"]);
            ip(&["-n", &node, "link", "set", iface, "up"]);
            ip(&["-n", peer_ns, "addr", "add", peer_addr, "dev", "eth0"]);
            ip(&["-n", peer_ns, "addr", "add", peer6, "dev", "eth0", "nodad"]);
            ip(&["-n", peer_ns, "link", "set", "eth0", "up"]);
            let gw = node_addr.split('/').next().unwrap();
            ip(&["-n", peer_ns, "route", "add", "default", "via", gw]);
            let gw6 = node6.split('/').next().unwrap();
            ip(&["-n", peer_ns, "-6", "route", "add", "default", "via", gw6]);
        }
        // The node routes Service IPs somewhere (as real nodes do), and forwards.
        ip(&["-n", &node, "route", "add", "default", "via", "192.168.0.100"]);
        ip(&["-n", &node, "-6", "route", "add", "default", "via", "fd00:1::100"]);
        for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            let ok =
                NetNamespace::named(&node).command("sysctl").unwrap().args(["-qw", sysctl]).status().unwrap().success();
            assert!(ok, "sysctl {sysctl} in the node namespace");
        }
        lab
    }

    pub fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    pub fn ns(&self, role: &str) -> NetNamespace {
        NetNamespace::named(&self.name(role))
    }

    /// Starts echo servers in a pod namespace (threads live until the process ends).
    pub fn echo(&self, role: &str, tcp_ports: &[u16], udp_ports: &[u16]) {
        for &port in tcp_ports {
            // [::] takes IPv4 too (v4-mapped), so one server answers both families.
            let listener = self.in_ns(role, move || TcpListener::bind(("::", port)).unwrap());
            let name = role.to_string();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    let peer = conn.peer_addr().map(|p| p.ip().to_canonical().to_string()).unwrap_or_default();
                    let _ = conn.write_all(format!("{name} {peer}\n").as_bytes());
                }
            });
        }
        for &port in udp_ports {
            let sock = self.in_ns(role, move || UdpSocket::bind(("::", port)).unwrap());
            let name = role.to_string();
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("{name} {}", peer.ip().to_canonical()).as_bytes(), peer);
                }
            });
        }
    }

    pub fn in_ns<T: Send>(&self, role: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name(role));
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// One TCP connection from `role` to `to`: the echo's answer, or the error.
    pub fn tcp(&self, role: &str, to: SocketAddr) -> std::io::Result<String> {
        self.in_ns(role, move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out.trim().to_string())
        })
    }

    pub fn iptables(&self, variant: Variant, args: &[&str]) -> String {
        let out = self
            .ns("node")
            .command(variant.binary(IpFamily::V4, backend_iptables::exec::Tool::Iptables))
            .unwrap()
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn save(&self, variant: Variant) -> String {
        let out = self
            .ns("node")
            .command(variant.binary(IpFamily::V4, backend_iptables::exec::Tool::Save))
            .unwrap()
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn dataplane(&self, variant: Variant, masquerade: MasqueradeConfig) -> IptablesDataplane {
        self.dataplane_for(variant, masquerade, FamilySet::V4)
    }

    pub fn dataplane_for(
        &self,
        variant: Variant,
        masquerade: MasqueradeConfig,
        families: FamilySet,
    ) -> IptablesDataplane {
        let mut ctx = BackendContext::new("node-1", self.ns("node"));
        ctx.families = families;
        ctx.masquerade = masquerade;
        ctx.node_ips = vec!["192.168.0.2".parse().unwrap(), "fd00:1::2".parse().unwrap()];
        ctx.section = serde_json::json!({ "variant": variant.as_str() });
        IptablesDataplane::from_context(&ctx).expect("build the backend")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The backend's sysctl records of the node namespace (see
        // backend_iptables::sysctl) go with it: its cookie is never reused.
        if let Ok(Ok(key)) = self.ns("node").run(backend_iptables::sysctl::netns_key) {
            for owner in ["iptables", "ipvs"] {
                let path = std::path::Path::new(backend_iptables::sysctl::RUN_DIR).join(format!("{owner}-{key}.json"));
                let _ = std::fs::remove_file(path);
            }
        }
        // Then the namespaces go, as their guards drop.
    }
}
