//! `cleanup()`: removes our virtual servers, switchyard0 and the helper rules,
//! and puts back the sysctls we changed.
//!
//! Works from a fresh process: ownership is read from the kernel (VIPs on
//! switchyard0, node addresses with a port in the NodePort range). Run it on
//! a thread inside the node namespace.
//!
//! [`remove_other_proxy`] removes another proxy's IPVS state (kube-proxy's
//! ipvs mode, when a node moves to switchyard).

use std::collections::BTreeSet;
use std::net::IpAddr;

use proxy_core::{IpFamily, NetNamespace};

use crate::IpvsError;
use crate::client::{ClientError, Ipvs, NetlinkIpvs};
use crate::link;
use crate::message::Request;
use crate::rules;

pub fn cleanup_blocking(node_port_range: (u16, u16)) -> Result<(), IpvsError> {
    let owner = crate::inspect::kernel_ownership(node_port_range)?;
    match NetlinkIpvs::connect() {
        Ok(mut client) => {
            let ours: Vec<Request> = client
                .services()?
                .into_iter()
                .filter(|vs| owner.owns(&vs.key))
                .map(|vs| Request::DelService(vs.key))
                .collect();
            client.execute(&ours)?;
        }
        // No IPVS: no virtual servers of ours either.
        Err(ClientError::Unavailable) => {}
        Err(e) => return Err(e.into()),
    }
    link::with_handle(async |h| link::delete_dummy(&h).await)?;
    rules::cleanup(&NetNamespace::current(), &IpFamily::ALL)?;
    // The sysctls we changed go back to the values found before.
    crate::sysctl::restore()?;
    Ok(())
}

/// What [`remove_other_proxy`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtherProxyRemoved {
    pub link: bool,
    pub virtual_servers: usize,
    pub sets: Vec<String>,
}

/// Removes another proxy's IPVS state: the virtual servers on the addresses
/// of its dummy link `link` (ClusterIPs, externalIPs, load-balancer IPs),
/// with `node_ports` also those on the node's addresses with a port in
/// `node_port_range` (its NodePorts), then the link itself, then the ipsets
/// `sets` picks. kube-proxy: `kube-ipvs0`, `KUBE-*` sets.
///
/// Without the link there is no sign of the other proxy's virtual servers,
/// and none are touched. Virtual servers on switchyard0's addresses are ours
/// and stay. `node_ports` is off when switchyard's own ipvs mode runs: the
/// NodePort keys are then the same as ours, and our sync takes them over.
/// A kernel without IPVS has no virtual servers: that part is skipped.
/// Run it on a thread inside the node namespace, after the other proxy's
/// iptables rules are gone (they reference the sets).
pub fn remove_other_proxy(
    link: &str,
    node_ports: bool,
    node_port_range: (u16, u16),
    sets: &dyn Fn(&str) -> bool,
) -> Result<OtherProxyRemoved, IpvsError> {
    let mut removed = OtherProxyRemoved::default();
    let found = link::with_handle(async |h| {
        let Some((index, _)) = link::link_by_name(&h, link).await? else { return Ok(None) };
        let theirs: BTreeSet<IpAddr> = link::addresses(&h, Some(index)).await?.into_iter().map(|(_, ip)| ip).collect();
        let ours: BTreeSet<IpAddr> = match link::dummy_index(&h).await? {
            Some(i) => link::addresses(&h, Some(i)).await?.into_iter().map(|(_, ip)| ip).collect(),
            None => BTreeSet::new(),
        };
        let node: BTreeSet<IpAddr> = link::node_addresses(&h).await?.into_iter().collect();
        Ok(Some((theirs, ours, node)))
    })?;
    if let Some((theirs, ours, node)) = found {
        match NetlinkIpvs::connect() {
            Ok(mut client) => {
                let in_range = |port: u16| (node_port_range.0..=node_port_range.1).contains(&port);
                let doomed: Vec<Request> = client
                    .services()?
                    .into_iter()
                    .filter(|vs| !ours.contains(&vs.key.addr))
                    .filter(|vs| {
                        theirs.contains(&vs.key.addr)
                            || (node_ports && node.contains(&vs.key.addr) && in_range(vs.key.port))
                    })
                    .map(|vs| Request::DelService(vs.key))
                    .collect();
                removed.virtual_servers = doomed.len();
                client.execute(&doomed)?;
            }
            Err(ClientError::Unavailable) => {}
            Err(e) => return Err(e.into()),
        }
        removed.link = link::with_handle(async |h| link::delete_link(&h, link).await)?;
    }
    removed.sets = rules::destroy_sets(&NetNamespace::current(), sets)?;
    Ok(removed)
}
