//! Removing what upstream kube-proxy leaves on a node, in every one of its
//! modes, when the node moves to switchyard (`switchyard --cleanup`, and
//! `removeKubeProxyLeftovers` at start, after switchyard's first sync):
//!
//! - iptables mode (and ipvs mode's helper rules): the `KUBE-*` chains of
//!   nat, filter and mangle, and every jump into them from the chains that
//!   stay, for IPv4 and IPv6, in both the nft and the legacy iptables
//!   (kube-proxy picks one per node; a node that switched once may hold
//!   both). Done by backend-iptables' own removal code and executor.
//! - nftables mode: the `ip kube-proxy` and `ip6 kube-proxy` tables, through
//!   backend-nftables' netlink client.
//! - ipvs mode: the virtual servers on `kube-ipvs0`'s addresses (and its
//!   NodePorts), the `kube-ipvs0` link, and the `KUBE-*` ipsets, through
//!   backend-ipvs' client. A kernel without IPVS is skipped.
//!
//! kubelet's own chains stay ([`KUBELET_CHAINS`]): kubelet made them, it
//! checks them through its canary, and `KUBE-FIREWALL` holds the rule that
//! drops martian packets to 127.0.0.0/8 (CVE-2020-8558), which kube-proxy
//! duplicates and, for that reason, never removes either.

use backend_iptables::{SystemExecutor, Table, Variant};
use proxy_core::{ErrorChain, IpFamily, NetNamespace};
use tracing::{debug, info};

/// Chains named `KUBE-*` that kubelet creates (kube-proxy's iptables mode
/// creates a duplicate `KUBE-FIREWALL` and leaves it on cleanup, as here).
pub const KUBELET_CHAINS: &[&str] = &["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY", "KUBE-FIREWALL"];

/// kube-proxy's nftables table name (in the `ip` and `ip6` families).
pub const NFTABLES_TABLE: &str = "kube-proxy";

/// kube-proxy's ipvs-mode dummy interface.
pub const IPVS_LINK: &str = "kube-ipvs0";

/// The iptables tables kube-proxy writes (mangle: only its canary chain).
const TABLES: [Table; 3] = [Table::Nat, Table::Filter, Table::Mangle];

/// Whether an iptables chain is kube-proxy's.
pub fn is_kube_proxy_chain(chain: &str) -> bool {
    chain.starts_with("KUBE-") && !KUBELET_CHAINS.contains(&chain)
}

/// Whether an ipset is kube-proxy's (ipvs mode: `KUBE-*`, IPv6 `KUBE-6-*`).
pub fn is_kube_proxy_set(name: &str) -> bool {
    name.starts_with("KUBE-")
}

/// What was removed.
#[derive(Clone, Debug, Default)]
pub struct Removed {
    /// "iptables-nft IPv4 nat KUBE-SERVICES", ...
    pub chains: Vec<String>,
    pub ipvs: backend_ipvs::cleanup::OtherProxyRemoved,
}

/// How to remove them.
#[derive(Clone, Debug)]
pub struct Options {
    pub netns: NetNamespace,
    /// Also NodePort-shaped virtual servers on the node's addresses (off when
    /// switchyard's own ipvs mode runs: it owns the same keys and takes them over).
    pub ipvs_node_ports: bool,
    pub node_port_range: (u16, u16),
}

/// Removes every leftover it finds; blocking (run it off the async
/// executor). Each part is tried whatever the others did; the error lists
/// every part that failed.
pub fn remove(opts: &Options) -> Result<Removed, String> {
    let mut removed = Removed::default();
    let mut failed = Vec::new();

    // 1. iptables, both implementations (a missing one is skipped).
    let variants: Vec<Variant> = [Variant::Nft, Variant::Legacy]
        .into_iter()
        .filter(|v| IpFamily::ALL.iter().any(|f| backend_iptables::supported::has_variant(*v, *f)))
        .collect();
    let variants = if variants.is_empty() { vec![Variant::Plain] } else { variants };
    for variant in variants {
        let exec = SystemExecutor { netns: opts.netns.clone(), variant };
        for family in IpFamily::ALL {
            if variant != Variant::Plain && !backend_iptables::supported::has_variant(variant, family) {
                continue;
            }
            match backend_iptables::cleanup::remove_chains(&exec, family, &TABLES, &is_kube_proxy_chain) {
                Ok(chains) => removed.chains.extend(
                    chains.into_iter().map(|(table, chain)| format!("iptables-{variant} {family} {table} {chain}")),
                ),
                Err(e) => failed.push(format!("iptables-{variant} {family}: {}", ErrorChain(&e))),
            }
        }
    }

    // 2. nftables: `nft delete table ip kube-proxy`, `... ip6 kube-proxy`.
    let kernel = backend_nftables::client::SystemKernel::new(opts.netns.clone());
    for family in IpFamily::ALL {
        if let Err(e) = backend_nftables::cleanup::delete_table(&kernel, family, NFTABLES_TABLE) {
            failed.push(format!("nftables table {family} {NFTABLES_TABLE}: {}", ErrorChain(&e)));
        }
    }

    // 3. IPVS, after the iptables rules that referenced the ipsets.
    let (node_ports, range) = (opts.ipvs_node_ports, opts.node_port_range);
    match opts.netns.run(|| backend_ipvs::cleanup::remove_other_proxy(IPVS_LINK, node_ports, range, &is_kube_proxy_set))
    {
        Ok(Ok(ipvs)) => removed.ipvs = ipvs,
        Ok(Err(e)) => failed.push(format!("ipvs: {}", ErrorChain(&e))),
        Err(e) => failed.push(format!("ipvs: cannot enter network namespace {}: {e}", opts.netns.label())),
    }

    if failed.is_empty() { Ok(removed) } else { Err(failed.join("; ")) }
}

/// [`remove`] with its outcome logged; returns the error text on failure.
pub fn remove_and_log(opts: &Options) -> Result<Removed, String> {
    let out = remove(opts);
    match &out {
        Ok(r) => {
            for chain in &r.chains {
                debug!(%chain, "removed kube-proxy's chain");
            }
            info!(
                chains = r.chains.len(),
                ipvs_link = r.ipvs.link,
                ipvs_virtual_servers = r.ipvs.virtual_servers,
                ipsets = r.ipvs.sets.len(),
                nftables_tables = %format!("ip {NFTABLES_TABLE}, ip6 {NFTABLES_TABLE} (if any)"),
                "removed kube-proxy's leftovers"
            );
        }
        Err(e) => tracing::error!(error = %e, "cannot remove all of kube-proxy's leftovers"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxys_chains_are_removed_and_kubelets_stay() {
        for ours in ["KUBE-SERVICES", "KUBE-SVC-ABCDEF", "KUBE-PROXY-CANARY", "KUBE-NODE-PORT", "KUBE-MARK-MASQ"] {
            assert!(is_kube_proxy_chain(ours), "{ours}");
        }
        for theirs in ["KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT", "SWITCHYARD-SERVICES", "INPUT"] {
            assert!(!is_kube_proxy_chain(theirs), "{theirs}");
        }
    }
}
