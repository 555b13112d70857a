//! The star lab's address plan: one node namespace in the middle, every
//! other namespace on a veth of its own (`eth0` there, a named device on the
//! node), routed through the node. The eBPF backend's tests and the bench
//! build this shape; the conformance lab (two nodes, a fabric) has its own
//! plan in `conformance::addresses`.
//!
//! ```text
//!  pod on subnet N (10.244.N.5) ─eth0══vDEV─┐
//!  ...                                      │ node (10.244.N.1 on each pod veth,
//!  ext (192.168.0.2) ──────────eth0══vext──┘       192.168.0.10 = InternalIP, ip_forward)
//! ```

use std::net::Ipv4Addr;

use crate::CommandError;
use crate::netns::Netns;

/// The node's address toward the outside client: its InternalIP.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);
/// The outside client.
pub const EXT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// Every pod subnet (`10.244.N.0/24`): the cluster CIDR.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// The node's gateway address on pod subnet `n` (`10.244.n.1`).
pub fn pod_gateway(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, 1)
}

/// The pod on subnet `n` (`10.244.n.5`).
pub fn pod_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, 5)
}

/// One spoke of the star: a veth from the node (`node_dev`, holding
/// `node_addr`) to `peer`'s `eth0` (holding `peer_addr`, default route via
/// the node's address). Addresses are `ADDR/PREFIX`. The link is created
/// inside the node namespace and its peer moved: the root namespace is
/// never touched (`ip -n NODE link add DEV type veth peer name eth0 netns PEER`).
pub fn spoke(node: &Netns, node_dev: &str, peer: &Netns, node_addr: &str, peer_addr: &str) -> Result<(), CommandError> {
    let gw = node_addr.split('/').next().unwrap_or(node_addr);
    node.ip(&["link", "add", node_dev, "type", "veth", "peer", "name", "eth0", "netns", peer.name()])?;
    node.ip(&["addr", "add", node_addr, "dev", node_dev])?;
    node.ip(&["link", "set", node_dev, "up"])?;
    peer.ip(&["addr", "add", peer_addr, "dev", "eth0"])?;
    peer.ip(&["link", "set", "eth0", "up"])?;
    peer.ip(&["route", "add", "default", "via", gw])
}

/// The node's IPv4 forwarding (a sysctl of the node namespace only).
pub fn forward(node: &Netns) -> Result<(), CommandError> {
    node.sysctl(&["net.ipv4.ip_forward=1"])
}

/// `ADDR/PREFIX`, as `ip addr add` wants it.
pub fn cidr(ip: Ipv4Addr, prefix: u8) -> String {
    format!("{ip}/{prefix}")
}
