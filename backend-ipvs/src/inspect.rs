//! `inspect()`: what is programmed, read from the kernel (IPVS, switchyard0
//! and our sets), never from memory; and which kernel objects are ours.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use proxy_core::{EmptyVerdict, FamilySet, FrontendKind, IpFamily, NetNamespace, ProgrammedFrontend, ProgrammedState};

use crate::IpvsError;
use crate::client::{Ipvs, NetlinkIpvs};
use crate::link;
use crate::message::ServiceKey;
use crate::reconcile::{self, Ownership};
use crate::rules::{self, Member, SetKind};

/// What is ours in the kernel now: the addresses on `switchyard0` and node
/// ports on the node's addresses (inspect and cleanup read it fresh, from no
/// memory of earlier syncs).
pub(crate) fn kernel_ownership(node_port_range: (u16, u16)) -> Result<Ownership, IpvsError> {
    let (vips, node_addresses) = link::with_handle(async |h| {
        let vips: BTreeSet<IpAddr> = match link::dummy_index(&h).await? {
            Some(i) => link::addresses(&h, Some(i)).await?.into_iter().map(|(_, ip)| ip).collect(),
            None => BTreeSet::new(),
        };
        Ok((vips, link::node_addresses(&h).await?))
    })?;
    Ok(Ownership { vips, node_addresses: node_addresses.into_iter().collect(), node_port_range })
}

pub(crate) fn inspect_blocking(families: FamilySet, node_port_range: (u16, u16)) -> Result<ProgrammedState, IpvsError> {
    let mut client = NetlinkIpvs::connect()?;
    let here = NetNamespace::current();
    let owner = kernel_ownership(node_port_range)?;
    let mut sets: BTreeMap<(SetKind, IpFamily), BTreeSet<Member>> = BTreeMap::new();
    for family in families.iter() {
        for kind in [SetKind::ClusterIp, SetKind::ExternalIp, SetKind::LoadBalancer, SetKind::NodePort, SetKind::Drop] {
            sets.insert((kind, family), rules::read_set(&here, kind, family)?);
        }
    }
    let in_set = |kind: SetKind, key: &ServiceKey| {
        sets.get(&(kind, key.family())).is_some_and(|s| s.contains(&Member::ip_port(key.addr, key.protocol, key.port)))
    };
    let mut state = ProgrammedState::default();
    for vs in client.services()? {
        if !owner.owns(&vs.key) || !families.contains(vs.key.family()) {
            continue;
        }
        let kind = [SetKind::ClusterIp, SetKind::ExternalIp, SetKind::LoadBalancer, SetKind::NodePort]
            .into_iter()
            .find(|k| in_set(*k, &vs.key))
            .map(|k| match k {
                SetKind::ClusterIp => FrontendKind::ClusterIP,
                SetKind::ExternalIp => FrontendKind::ExternalIP,
                SetKind::LoadBalancer => FrontendKind::LoadBalancer,
                _ => FrontendKind::NodePort,
            })
            // Unclassified: a VIP is reported as a ClusterIP, a node address as a NodePort.
            .unwrap_or(if owner.vips.contains(&vs.key.addr) {
                FrontendKind::ClusterIP
            } else {
                FrontendKind::NodePort
            });
        let dests = client.dests(&vs.key)?;
        let frontend = reconcile::frontend_of(&vs.key, kind);
        let entry = state.frontends.entry(frontend).or_insert_with(ProgrammedFrontend::default);
        entry.endpoints.extend(dests.iter().filter(|d| d.weight > 0).map(|d| d.socket_addr()));
        entry.affinity_timeout_seconds = vs.persistence();
        entry.empty_verdict = entry
            .endpoints
            .is_empty()
            .then(|| if in_set(SetKind::Drop, &vs.key) { EmptyVerdict::Drop } else { EmptyVerdict::Reject });
    }
    Ok(state)
}
