//! The sysctls IPVS needs, written in the node namespace only.
//!
//! `/proc/sys/net` resolves to the namespace of the thread that opens the
//! file, so these must run on a thread inside the node namespace. The value
//! found before each change is recorded ([`backend_iptables::sysctl`], owner
//! `ipvs`) and written back by cleanup, if the sysctl still holds ours.

use backend_iptables::sysctl::Sysctls;

use crate::IpvsError;

/// The owner name of our sysctl records.
const OWNER: &str = "ipvs";

/// (name, value) as kube-proxy's ipvs mode sets them (`proxier.go`).
pub const SYSCTLS: &[(&str, &str)] = &[
    // Let iptables' NAT see IPVS connections: needed for MASQUERADE.
    ("net.ipv4.vs.conntrack", "1"),
    // Expire connections to a deleted real server on their next packet,
    // so that clients reconnect instead of hanging.
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    // Expire persistence templates of a quiescent (weight 0) real server.
    ("net.ipv4.vs.expire_quiescent_template", "1"),
];

fn set(name: &str, value: &str) -> Result<bool, IpvsError> {
    Sysctls::new(OWNER).set(name, value).map_err(|e| IpvsError::Sysctl { name: e.name, source: e.source })
}

/// Writes [`SYSCTLS`]; on kernels before 5.9, also `conn_reuse_mode=0`
/// (with conntrack=1 the default mode delayed reused connections by a second;
/// fixed in 5.9 by commit f0a5e4d7a594, after which kube-proxy leaves it alone).
/// Returns the sysctls whose value it changed.
pub fn apply() -> Result<Vec<&'static str>, IpvsError> {
    let mut changed = Vec::new();
    for (name, value) in SYSCTLS {
        if set(name, value)? {
            changed.push(*name);
        }
    }
    if kernel_before(5, 9) && set("net.ipv4.vs.conn_reuse_mode", "0")? {
        changed.push("net.ipv4.vs.conn_reuse_mode");
    }
    Ok(changed)
}

/// kube-proxy's `strictARP`: `arp_ignore=1` (answer only for addresses on
/// the receiving interface) and `arp_announce=2` (use the best local source),
/// so the node does not answer ARP for VIPs it holds on `switchyard0`.
pub const STRICT_ARP: &[(&str, &str)] =
    &[("net.ipv4.conf.all.arp_ignore", "1"), ("net.ipv4.conf.all.arp_announce", "2")];

/// Writes [`STRICT_ARP`] (recorded, and restored by cleanup, as the others).
pub fn apply_strict_arp() -> Result<Vec<&'static str>, IpvsError> {
    let mut changed = Vec::new();
    for (name, value) in STRICT_ARP {
        if set(name, value)? {
            changed.push(*name);
        }
    }
    Ok(changed)
}

/// Writes back the values found before [`apply`] changed them (cleanup).
pub fn restore() -> Result<Vec<String>, IpvsError> {
    Sysctls::new(OWNER).restore().map_err(|e| IpvsError::Sysctl { name: e.name, source: e.source })
}

/// Whether the running kernel is older than `major.minor`.
pub fn kernel_before(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version < (major, minor)
}
