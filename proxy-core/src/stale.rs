//! Which UDP flows are stale after a change: the core's answer, for every
//! backend that keeps connection state (kernel conntrack, its own maps).
//!
//! UDP has no teardown: after an endpoint goes away, a client that keeps
//! sending from the same socket matches its old conntrack entry and keeps
//! being sent to the dead endpoint (or, for a Service that had no endpoints,
//! is never translated at all). Like kube-proxy, flows whose original
//! destination is a frontend of the changed Service port and whose reply
//! source (where they were sent) is no longer one of its endpoints are stale.
//! A backend deletes them: from the kernel's conntrack table with
//! `proxy_core::conntrack` (feature `conntrack`; iptables, nftables, ipvs),
//! or from its own connection map (eBPF).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::dataplane::SyncRequest;
use crate::model::{IpFamily, Protocol, ServiceName};
use crate::plan::{FrontendKind, ServicePlan, ServicePortPlan};
use crate::snapshot::Snapshot;

/// Which traffic a stale-flow rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendMatch {
    /// Sent to this address and port (ClusterIP, externalIP, LB IP).
    Address(SocketAddr),
    /// Sent to this port on any address (node ports; matched by port as kube-proxy does).
    NodePort(u16),
}

/// UDP flows to `frontend` whose reply source is not in `allowed` are stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleFlows {
    pub frontend: FrontendMatch,
    pub allowed: BTreeSet<SocketAddr>,
}

impl StaleFlows {
    /// Whether a UDP flow sent to `orig_dst` and answered from `reply_src` is stale.
    pub fn matches(&self, orig_dst: SocketAddr, reply_src: SocketAddr) -> bool {
        let hits = match self.frontend {
            FrontendMatch::Address(a) => a == orig_dst,
            FrontendMatch::NodePort(p) => p == orig_dst.port(),
        };
        hits && !self.allowed.contains(&reply_src)
    }
}

/// Many rules indexed by what a flow is matched on: one lookup per flow
/// instead of one test per rule (a first sync checks every UDP frontend).
/// A flow is stale when any rule for its destination says so.
#[derive(Clone, Debug, Default)]
pub struct StaleIndex {
    addresses: BTreeMap<SocketAddr, Vec<BTreeSet<SocketAddr>>>,
    node_ports: BTreeMap<u16, Vec<BTreeSet<SocketAddr>>>,
}

impl StaleIndex {
    pub fn new<'a>(rules: impl IntoIterator<Item = &'a StaleFlows>) -> StaleIndex {
        let mut index = StaleIndex::default();
        for r in rules {
            let slot = match r.frontend {
                FrontendMatch::Address(a) => index.addresses.entry(a).or_default(),
                FrontendMatch::NodePort(p) => index.node_ports.entry(p).or_default(),
            };
            if !slot.contains(&r.allowed) {
                slot.push(r.allowed.clone());
            }
        }
        index
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.node_ports.is_empty()
    }

    /// Whether a UDP flow sent to `orig_dst` and answered from `reply_src`
    /// is stale under any rule (as [`StaleFlows::matches`] on each).
    pub fn matches(&self, orig_dst: SocketAddr, reply_src: SocketAddr) -> bool {
        let hit = |sets: Option<&Vec<BTreeSet<SocketAddr>>>| {
            sets.is_some_and(|sets| sets.iter().any(|allowed| !allowed.contains(&reply_src)))
        };
        hit(self.addresses.get(&orig_dst)) || hit(self.node_ports.get(&orig_dst.port()))
    }
}

/// Endpoints a port plan reaches by any route.
fn endpoints(p: &ServicePortPlan) -> BTreeSet<SocketAddr> {
    p.routes().flat_map(|(_, r)| r.endpoints().iter().map(|e| e.addr())).collect()
}

fn frontends(p: &ServicePortPlan) -> impl Iterator<Item = FrontendMatch> + '_ {
    p.frontends().map(|f| match (f.kind, f.ip) {
        (FrontendKind::NodePort, _) | (_, None) => FrontendMatch::NodePort(f.port),
        (_, Some(ip)) => FrontendMatch::Address(SocketAddr::new(ip, f.port)),
    })
}

/// The stale UDP flows of one Service, of one family, moving from `old` to
/// `new` (either may be absent): for each UDP port that lost an endpoint, or
/// got its first one, every flow to its frontends not answered by one of its
/// endpoints now. `everything`: every UDP port of `new` counts as changed
/// (after rules were repaired, flows may have met broken ones).
pub fn stale_udp(
    family: IpFamily,
    old: Option<&ServicePlan>,
    new: Option<&ServicePlan>,
    everything: bool,
) -> Vec<StaleFlows> {
    let udp = |plan: Option<&ServicePlan>| -> BTreeMap<String, ServicePortPlan> {
        plan.map(|p| {
            p.ports
                .iter()
                .filter(|pp| pp.family == family && pp.protocol == Protocol::Udp)
                .map(|pp| (pp.name.port.to_string(), pp.clone()))
                .collect()
        })
        .unwrap_or_default()
    };
    let (old, new) = (udp(old), udp(new));
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let (o, n) = (old.get(name), new.get(name));
        let old_eps = o.map(endpoints).unwrap_or_default();
        let new_eps = n.map(endpoints).unwrap_or_default();
        let lost = old_eps.difference(&new_eps).next().is_some();
        let gained_first = o.is_some() && old_eps.is_empty() && !new_eps.is_empty();
        if !(lost || gained_first || (everything && n.is_some())) {
            continue;
        }
        let mut matches: BTreeSet<FrontendMatch> = BTreeSet::new();
        matches.extend(o.into_iter().flat_map(frontends));
        matches.extend(n.into_iter().flat_map(frontends));
        out.extend(matches.into_iter().map(|frontend| StaleFlows { frontend, allowed: new_eps.clone() }));
    }
    out
}

/// The stale UDP flows of one sync, per family, for a backend that keeps the
/// snapshot of its last successful sync (`old`; None when it has none, as
/// after a start or a failed sync): the Services the request names as
/// changed, or, on a full request, every Service of either snapshot whose
/// plan differs. With `everything`, every UDP port of every Service counts
/// as changed (flows left by a previous process may point anywhere).
pub fn stale_udp_of_sync(
    families: impl IntoIterator<Item = IpFamily>,
    old: Option<&Snapshot>,
    request: &SyncRequest,
    everything: bool,
) -> BTreeMap<IpFamily, Vec<StaleFlows>> {
    let new = &request.snapshot;
    let names: BTreeSet<&ServiceName> = if request.full || everything || old.is_none() {
        let mut all: BTreeSet<&ServiceName> = new.services().map(|p| p.name()).collect();
        all.extend(old.into_iter().flat_map(|o| o.services().map(|p| p.name())));
        all
    } else {
        request.changed.iter().collect()
    };
    let mut out = BTreeMap::new();
    for family in families {
        let mut work = Vec::new();
        for name in &names {
            let (o, n) = (old.and_then(|s| s.service(name)), new.service(name));
            if !everything && old.is_some() && ServicePlan::unchanged(o, n) {
                continue;
            }
            work.extend(stale_udp(family, o.map(|p| &**p), n.map(|p| &**p), everything));
        }
        out.insert(family, work);
    }
    out
}
