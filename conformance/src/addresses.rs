//! The lab's address plan: fixed addresses inside per-run namespaces.
//!
//! Addresses are the same in every run (namespaces isolate them), so scenario
//! files can carry real Kubernetes YAML with literal IPs. Only the namespace
//! names are unique per run.
//!
//! ```text
//!                      fabric (router + bridge br0 172.18.0.1/24, fd00:172:18::1/64)
//!        ┌──────────────────┬───────────────┴──────────┬──────────────────────────┐
//!   eth0 172.18.0.11   eth1 192.0.2.11           eth0 172.18.0.12       198.51.100.1 ── external
//!   ┌──────────────────────────────┐        ┌─────────────────────────┐      198.51.100.100
//!   │ node1 (the proxy under test) │        │ node2 (no proxy)        │      fd00:198:51:100::100
//!   │ gw 10.244.1.1 on pod veths   │        │ gw 10.244.2.1           │
//!   └──┬──────┬──────┬──────┬──────┘        └──┬──────┬──────┬──────┬─┘
//!     a1     a2     a3   client1              b1     b2     b3   client2
//!   10.244.1.10 .11 .12  .100               10.244.2.10 .11 .12  .100
//! ```
//!
//! Routes: node1 and node2 reach each other's pod CIDR through each other
//! (as a cluster's pod network would); the fabric and node2 send the Service
//! CIDR and the external/load-balancer range to node1, the only node with a
//! proxy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The node the backend under test programs.
pub const NODE1: &str = "node1";
/// The node holding remote endpoints (no proxy runs there).
pub const NODE2: &str = "node2";
/// The off-cluster client.
pub const EXTERNAL: &str = "external";

/// Pod CIDRs: the cluster CIDRs given to the backend for local-traffic detection.
pub const CLUSTER_CIDR_V4: &str = "10.244.0.0/16";
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/56";
/// Where scenario ClusterIPs come from (routed to node1 by node2 and the fabric).
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/12";
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/108";
/// Where scenario externalIPs and load-balancer IPs come from (routed to node1).
pub const EXTERNAL_RANGE_V4: &str = "203.0.113.0/24";
pub const EXTERNAL_RANGE_V6: &str = "fd00:203:113::/64";

/// What a lab host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostKind {
    /// A node's own network namespace (host network).
    Node,
    /// A pod on a node.
    Pod,
    /// A client outside the cluster.
    External,
}

/// One host of the lab: a node, a pod, or the external client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    pub name: &'static str,
    pub kind: HostKind,
    /// The node a pod runs on (a node's own name for nodes).
    pub node: Option<&'static str>,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The address probes from this host are sent from, when it has several
    /// (node1's host client uses its second address so that masquerading to
    /// its first address is visible).
    pub probe_source_v4: Option<Ipv4Addr>,
    pub probe_source_v6: Option<Ipv6Addr>,
}

impl HostPlan {
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 { IpAddr::V6(self.ipv6) } else { IpAddr::V4(self.ipv4) }
    }

    /// The address this host's probes carry as their source.
    pub fn probe_source(&self, v6: bool) -> IpAddr {
        match (v6, self.probe_source_v4, self.probe_source_v6) {
            (false, Some(src), _) => IpAddr::V4(src),
            (true, _, Some(src)) => IpAddr::V6(src),
            _ => self.ip(v6),
        }
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

const fn v6(h: [u16; 8]) -> Ipv6Addr {
    Ipv6Addr::new(h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
}

const fn pod(name: &'static str, node: &'static str, n: u8, last: u8, last6: u16) -> HostPlan {
    HostPlan {
        name,
        kind: HostKind::Pod,
        node: Some(node),
        ipv4: v4(10, 244, n, last),
        ipv6: v6([0xfd00, 0x10, 0x244, n as u16, 0, 0, 0, last6]),
        probe_source_v4: None,
        probe_source_v6: None,
    }
}

/// Every host of the lab.
pub const HOSTS: &[HostPlan] = &[
    HostPlan {
        name: NODE1,
        kind: HostKind::Node,
        node: Some(NODE1),
        ipv4: v4(172, 18, 0, 11),
        ipv6: v6([0xfd00, 0x172, 0x18, 0, 0, 0, 0, 0x11]),
        probe_source_v4: Some(NODE1_SECOND_V4),
        probe_source_v6: Some(NODE1_SECOND_V6),
    },
    HostPlan {
        name: NODE2,
        kind: HostKind::Node,
        node: Some(NODE2),
        ipv4: v4(172, 18, 0, 12),
        ipv6: v6([0xfd00, 0x172, 0x18, 0, 0, 0, 0, 0x12]),
        probe_source_v4: None,
        probe_source_v6: None,
    },
    HostPlan {
        name: EXTERNAL,
        kind: HostKind::External,
        node: None,
        ipv4: v4(198, 51, 100, 100),
        ipv6: v6([0xfd00, 0x198, 0x51, 0x100, 0, 0, 0, 0x100]),
        probe_source_v4: None,
        probe_source_v6: None,
    },
    pod("a1", NODE1, 1, 10, 0x10),
    pod("a2", NODE1, 1, 11, 0x11),
    pod("a3", NODE1, 1, 12, 0x12),
    pod("client1", NODE1, 1, 100, 0x100),
    pod("b1", NODE2, 2, 10, 0x10),
    pod("b2", NODE2, 2, 11, 0x11),
    pod("b3", NODE2, 2, 12, 0x12),
    pod("client2", NODE2, 2, 100, 0x100),
];

/// node1's second interface (`eth1`), its ExternalIP: a second node address
/// for NodePorts, and the source of node1's host-network probes.
pub const NODE1_SECOND_V4: Ipv4Addr = v4(192, 0, 2, 11);
pub const NODE1_SECOND_V6: Ipv6Addr = v6([0xfd00, 0x192, 0, 2, 0, 0, 0, 0x11]);
pub const FABRIC_SECOND_V6: Ipv6Addr = v6([0xfd00, 0x192, 0, 2, 0, 0, 0, 1]);
/// The fabric's gateway addresses.
pub const FABRIC_V4: Ipv4Addr = v4(172, 18, 0, 1);
pub const FABRIC_V6: Ipv6Addr = v6([0xfd00, 0x172, 0x18, 0, 0, 0, 0, 1]);
pub const FABRIC_SECOND_V4: Ipv4Addr = v4(192, 0, 2, 1);
pub const FABRIC_EXT_V4: Ipv4Addr = v4(198, 51, 100, 1);
pub const FABRIC_EXT_V6: Ipv6Addr = v6([0xfd00, 0x198, 0x51, 0x100, 0, 0, 0, 1]);
/// The pod gateway on node N (on every pod veth of that node; IPv6 uses fe80::1).
pub const fn pod_gateway_v4(node: u8) -> Ipv4Addr {
    v4(10, 244, node, 1)
}
pub const POD_GATEWAY_V6: Ipv6Addr = v6([0xfe80, 0, 0, 0, 0, 0, 0, 1]);
/// The node's global address on every pod veth (IPv6's 10.244.N.1): the
/// source masquerading picks for traffic to a pod on that node.
pub const fn pod_gateway_global_v6(node: u8) -> Ipv6Addr {
    v6([0xfd00, 0x10, 0x244, node as u16, 0, 0, 0, 1])
}

/// Looks a host up by name.
pub fn host(name: &str) -> Option<&'static HostPlan> {
    HOSTS.iter().find(|h| h.name == name)
}

/// The host owning an address (a pod's, a node's primary), if any.
pub fn host_by_ip(ip: IpAddr) -> Option<&'static HostPlan> {
    let ip = canonical(ip);
    HOSTS.iter().find(|h| h.ip(false) == ip || h.ip(true) == ip)
}

/// Named node addresses a probe can target (`to: {nodePort: ..., node: NAME}`).
pub fn node_address(name: &str, v6: bool) -> Option<IpAddr> {
    match (name, v6) {
        ("node1" | "node1-internal", _) => host(NODE1).map(|h| h.ip(v6)),
        ("node1-ext", false) => Some(IpAddr::V4(NODE1_SECOND_V4)),
        ("node1-ext", true) => Some(IpAddr::V6(NODE1_SECOND_V6)),
        ("node1-gw", false) => Some(IpAddr::V4(pod_gateway_v4(1))),
        ("node1-gw", true) => Some(IpAddr::V6(pod_gateway_global_v6(1))),
        ("node2", _) => host(NODE2).map(|h| h.ip(v6)),
        _ => None,
    }
}

/// Every local address of node1 (what its proxy treats as "the node").
pub fn node1_addresses() -> Vec<IpAddr> {
    let n1 = host(NODE1).map(|h| (h.ip(false), h.ip(true)));
    let mut out: Vec<IpAddr> = n1.into_iter().flat_map(|(a, b)| [a, b]).collect();
    out.push(IpAddr::V4(NODE1_SECOND_V4));
    out.push(IpAddr::V6(NODE1_SECOND_V6));
    out.push(IpAddr::V4(pod_gateway_v4(1)));
    out.push(IpAddr::V6(pod_gateway_global_v6(1)));
    out
}

/// node1's InternalIPs, the node IPs given to the backend.
pub fn node1_primary_ips() -> Vec<IpAddr> {
    host(NODE1).map(|h| vec![h.ip(false), h.ip(true)]).unwrap_or_default()
}

/// The lab's cluster CIDRs.
pub fn cluster_cidrs() -> Vec<IpNet> {
    [CLUSTER_CIDR_V4, CLUSTER_CIDR_V6].iter().filter_map(|c| c.parse().ok()).collect()
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, seen by dual-stack sockets) to IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_have_unique_names_and_addresses() {
        let mut names: Vec<_> = HOSTS.iter().map(|h| h.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), HOSTS.len());
        for h in HOSTS {
            assert_eq!(host_by_ip(h.ip(false)).map(|x| x.name), Some(h.name));
            assert_eq!(host_by_ip(h.ip(true)).map(|x| x.name), Some(h.name));
        }
    }

    #[test]
    fn pods_are_in_the_cluster_cidr_and_nodes_are_not() {
        let cidrs = cluster_cidrs();
        for h in HOSTS {
            let inside = cidrs.iter().any(|c| c.contains(&h.ip(false)));
            assert_eq!(inside, h.kind == HostKind::Pod, "{}", h.name);
            let inside6 = cidrs.iter().any(|c| c.contains(&h.ip(true)));
            assert_eq!(inside6, h.kind == HostKind::Pod, "{} v6", h.name);
        }
    }

    #[test]
    fn mapped_addresses_are_canonicalised() {
        let mapped: IpAddr = "::ffff:10.244.1.10".parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(host_by_ip(mapped).map(|h| h.name), Some("a1"));
    }
}
