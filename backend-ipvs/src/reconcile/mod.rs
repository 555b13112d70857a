//! From plans to IPVS: the desired virtual servers, and the ordered netlink
//! operations that turn what the kernel has into them.
//!
//! Pure functions over [`crate::client::Ipvs`], so [`crate::fake::FakeIpvs`]
//! tests them on hosts without IPVS.
//!
//! Graceful termination (kube-proxy's `graceful_termination.go`): a real
//! server that leaves goes to weight 0, so no new connection picks it while
//! established ones keep flowing, and is deleted once it has no connection
//! left or its grace period has passed. UDP real servers are deleted at once,
//! as kube-proxy does (a UDP "connection" never closes; `expire_nodest_conn`
//! moves its next packet to a live real server).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proxy_core::{
    EmptyVerdict, FamilySet, Frontend, FrontendKind, IpFamily, MasqueradeConfig, MasqueradeSet, NodePortAddresses,
    Protocol, ServiceName, ServicePlan, ServicePortPlan, Snapshot,
};

use crate::client::{ClientError, Ipvs};
use crate::message::{RealServer, Request, ServiceKey, VirtualServer};
use crate::rules::{Member, SetKind, Sets};

/// Weight of a serving real server. Every endpoint weighs the same, as in kube-proxy.
pub const WEIGHT: u32 = 1;

/// One virtual server we want.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub vs: VirtualServer,
    pub dests: BTreeSet<SocketAddr>,
    pub frontend: Frontend,
    pub service: ServiceName,
}

/// Everything the kernel should hold, kept per Service with reference
/// counts so that a partial sync updates it in O(changed Services): each
/// Service's share is taken out and put back, and only addresses and set
/// members whose count goes to or from zero change in the kernel. A full sync
/// builds it from scratch through the same code ([`desired`]).
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// Every virtual server, with the Service that claimed it.
    pub services: BTreeMap<ServiceKey, DesiredService>,
    shares: BTreeMap<ServiceName, Share>,
    vip_refs: BTreeMap<IpAddr, usize>,
    member_refs: BTreeMap<(SetKind, IpFamily, Member), usize>,
}

/// What one Service contributes.
#[derive(Clone, Debug, Default)]
struct Share {
    keys: BTreeSet<ServiceKey>,
    vips: BTreeSet<IpAddr>,
    members: BTreeSet<(SetKind, IpFamily, Member)>,
}

/// What changed in the aggregate when one or more Services were updated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Virtual servers to reconcile: the Services' old and new ones.
    pub keys: BTreeSet<ServiceKey>,
    pub vips_added: BTreeSet<IpAddr>,
    pub vips_removed: BTreeSet<IpAddr>,
    pub members_added: BTreeSet<(SetKind, IpFamily, Member)>,
    pub members_removed: BTreeSet<(SetKind, IpFamily, Member)>,
    /// Frontends claimed by an earlier Service, skipped (for warnings).
    pub conflicts: Vec<String>,
}

impl Change {
    /// Folds another update in; an address or member removed and re-added cancels out.
    fn absorb(&mut self, other: Change) {
        self.keys.extend(other.keys);
        self.conflicts.extend(other.conflicts);
        for v in other.vips_removed {
            if !self.vips_added.remove(&v) {
                self.vips_removed.insert(v);
            }
        }
        for v in other.vips_added {
            if !self.vips_removed.remove(&v) {
                self.vips_added.insert(v);
            }
        }
        for m in other.members_removed {
            if !self.members_added.remove(&m) {
                self.members_removed.insert(m);
            }
        }
        for m in other.members_added {
            if !self.members_removed.remove(&m) {
                self.members_added.insert(m);
            }
        }
    }

    /// `ipset restore` lines for the member changes.
    pub fn sets_script(&self) -> String {
        let mut s = String::new();
        for (kind, family, m) in &self.members_added {
            s.push_str(&format!("add {} {}\n", kind.name(*family), m.0));
        }
        for (kind, family, m) in &self.members_removed {
            s.push_str(&format!("del {} {}\n", kind.name(*family), m.0));
        }
        s
    }
}

fn inc<K: Ord + Clone>(refs: &mut BTreeMap<K, usize>, k: &K) -> bool {
    let n = refs.entry(k.clone()).or_insert(0);
    *n += 1;
    *n == 1
}

fn dec<K: Ord>(refs: &mut BTreeMap<K, usize>, k: &K) -> bool {
    match refs.get_mut(k) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            refs.remove(k);
            true
        }
        None => false,
    }
}

impl Desired {
    /// switchyard0's addresses.
    pub fn vips(&self) -> BTreeSet<IpAddr> {
        self.vip_refs.keys().copied().collect()
    }

    pub fn has_vip(&self, ip: &IpAddr) -> bool {
        self.vip_refs.contains_key(ip)
    }

    pub fn vip_count(&self) -> usize {
        self.vip_refs.len()
    }

    /// Every set's members.
    pub fn sets(&self) -> Sets {
        let mut sets = Sets::new();
        for (kind, family, m) in self.member_refs.keys() {
            sets.entry((*kind, *family)).or_default().insert(m.clone());
        }
        sets
    }

    /// The virtual servers a Service has now.
    pub fn keys_of(&self, name: &ServiceName) -> BTreeSet<ServiceKey> {
        self.shares.get(name).map(|s| s.keys.clone()).unwrap_or_default()
    }

    /// Replaces one Service's share with what `plan` (absent: deleted) asks for.
    pub fn update(&mut self, name: &ServiceName, plan: Option<&ServicePlan>, inputs: &Inputs<'_>) -> Change {
        let mut change = Change::default();
        if let Some(old) = self.shares.remove(name) {
            for k in &old.keys {
                if self.services.get(k).is_some_and(|d| &d.service == name) {
                    self.services.remove(k);
                }
            }
            change.keys.extend(old.keys);
            for v in &old.vips {
                if dec(&mut self.vip_refs, v) {
                    change.vips_removed.insert(*v);
                }
            }
            for m in &old.members {
                if dec(&mut self.member_refs, m) {
                    change.members_removed.insert(m.clone());
                }
            }
        }
        let Some(plan) = plan else { return change };
        let mut share = Share::default();
        for port in &plan.ports {
            if inputs.families.contains(port.family) {
                add_port_plan(&mut self.services, &mut share, &mut change.conflicts, port, inputs);
            }
        }
        change.keys.extend(share.keys.iter().copied());
        for v in &share.vips {
            if inc(&mut self.vip_refs, v) && !change.vips_removed.remove(v) {
                change.vips_added.insert(*v);
            }
        }
        for m in &share.members {
            if inc(&mut self.member_refs, m) && !change.members_removed.remove(m) {
                change.members_added.insert(m.clone());
            }
        }
        self.shares.insert(name.clone(), share);
        change
    }

    /// Updates several Services (a partial sync's change set).
    pub fn update_all<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a ServiceName>,
        snapshot: &Snapshot,
        inputs: &Inputs<'_>,
    ) -> Change {
        // Every changed Service lets go of its frontends before any claims
        // one: a contested frontend changing hands (its older owner deleted,
        // the next one taking it over) must not meet its old owner, whatever
        // order the names come in.
        let names: Vec<&ServiceName> = names.into_iter().collect();
        let mut change = Change::default();
        for name in &names {
            change.absorb(self.update(name, None, inputs));
        }
        for name in &names {
            if let Some(plan) = snapshot.service(name) {
                change.absorb(self.update(name, Some(plan), inputs));
            }
        }
        change
    }
}

/// What the desired state is computed from besides the snapshot.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub families: FamilySet,
    pub scheduler: &'a str,
    /// Local addresses of the node namespace (not loopback, not switchyard0).
    pub node_addresses: &'a [IpAddr],
    pub nodeport_addresses: &'a NodePortAddresses,
    pub primary_ips: &'a [IpAddr],
    /// The snapshot's masquerade configuration (for the flow tables).
    pub masquerade: &'a MasqueradeConfig,
}

/// The desired state for a whole snapshot (full syncs), and the conflicts found.
pub fn desired_with_conflicts(snapshot: &Snapshot, inputs: &Inputs<'_>) -> (Desired, Vec<String>) {
    let mut d = Desired::default();
    let mut conflicts = Vec::new();
    for plan in snapshot.services() {
        conflicts.extend(d.update(plan.name(), Some(plan), inputs).conflicts);
    }
    (d, conflicts)
}

/// The desired state for a whole snapshot.
pub fn desired(snapshot: &Snapshot, inputs: &Inputs<'_>) -> Desired {
    desired_with_conflicts(snapshot, inputs).0
}

fn add_port_plan(
    services: &mut BTreeMap<ServiceKey, DesiredService>,
    share: &mut Share,
    conflicts: &mut Vec<String>,
    plan: &ServicePortPlan,
    inputs: &Inputs<'_>,
) {
    let family = plan.family;
    let proto = plan.protocol;
    let service = plan.name.service.clone();
    let mut member = |kind: SetKind, m: Member| {
        share.members.insert((kind, family, m));
    };
    // The core's decisions for this port, rendered verbatim.
    let table = plan.flow_table(inputs.masquerade);
    for f in &table.frontends {
        let frontend = f.frontend;
        // IPVS cannot pick real servers by source: a virtual server carries
        // the route of traffic from outside the cluster (with
        // externalTrafficPolicy Local, pods and the node reach only local
        // endpoints too: the HostNetwork/pod capability says so).
        let route = table.route(f.external.route);
        let masquerade_set = match f.masquerade_set() {
            m if m.all() => Some(SetKind::MasqAll),
            m if m.none() => None,
            MasqueradeSet { pod: false, node: true, external: true } => Some(SetKind::MasqNotPod),
            MasqueradeSet { pod: false, node: true, external: false } => Some(SetKind::MasqNode),
            other => {
                conflicts.push(format!(
                    "{frontend} of {}: masquerading {other:?} has no IPVS helper rule; not masqueraded",
                    plan.name
                ));
                None
            }
        };
        let addrs: Vec<IpAddr> = match (frontend.kind, frontend.ip) {
            (FrontendKind::NodePort, _) => inputs
                .node_addresses
                .iter()
                .filter(|ip| IpFamily::of(ip) == family)
                .filter(|ip| inputs.nodeport_addresses.selects(**ip, inputs.primary_ips))
                .copied()
                .collect(),
            (_, Some(ip)) => vec![ip],
            (_, None) => vec![],
        };
        for addr in addrs {
            let key = ServiceKey { protocol: proto, addr, port: frontend.port };
            // The planner serves a contested frontend from one Service only
            // (`proxy_core::contest`); what is left is a node port on an
            // address another Service uses as externalIP: reported, skipped.
            if services.contains_key(&key) {
                conflicts.push(format!("{key} is claimed by several Service ports; {} skipped", plan.name));
                continue;
            }
            let persistent = plan.affinity_timeout_seconds;
            let vs = VirtualServer {
                key,
                scheduler: inputs.scheduler.to_string(),
                flags: if persistent.is_some() { crate::message::SVC_F_PERSISTENT } else { 0 },
                timeout: persistent.unwrap_or(0),
                netmask: VirtualServer::full_netmask(family),
            };
            let dests = route.endpoints().iter().map(|e| e.addr()).collect();
            services.insert(key, DesiredService { vs, dests, frontend, service: service.clone() });
            share.keys.insert(key);
            let m = Member::ip_port(addr, proto, frontend.port);
            let kind = match frontend.kind {
                FrontendKind::ClusterIP => SetKind::ClusterIp,
                FrontendKind::ExternalIP => SetKind::ExternalIp,
                FrontendKind::LoadBalancer => SetKind::LoadBalancer,
                FrontendKind::NodePort => SetKind::NodePort,
            };
            member(kind, m.clone());
            if frontend.kind != FrontendKind::NodePort {
                share.vips.insert(addr);
                member(SetKind::Vips, Member::ip(addr));
            }
            if let Some(kind) = masquerade_set {
                member(kind, m.clone());
            }
            if route.empty_verdict() == Some(EmptyVerdict::Drop) {
                member(SetKind::Drop, m.clone());
            }
            // The firewall rule exempts the node (`! --src-type LOCAL`): the
            // cells of the other classes say whether the ranges apply.
            if f.external.source_ranges && !table.source_ranges.is_empty() {
                member(SetKind::LbFirewall, m.clone());
                for net in &table.source_ranges {
                    member(SetKind::LbSource, Member::ip_port_net(addr, proto, frontend.port, *net));
                }
            }
        }
    }
    // Hairpin: an endpoint of the core's hairpin set reaching itself.
    for e in &table.hairpin {
        member(SetKind::Loopback, Member::ip_port_ip(e.ip(), proto, e.port(), e.ip()));
    }
}

/// Whether a virtual server found in the kernel is ours: its address is on
/// switchyard0, or it is a node address with a port in the NodePort range.
#[derive(Clone, Debug)]
pub struct Ownership {
    pub vips: BTreeSet<IpAddr>,
    pub node_addresses: BTreeSet<IpAddr>,
    pub node_port_range: (u16, u16),
}

impl Ownership {
    pub fn owns(&self, key: &ServiceKey) -> bool {
        self.vips.contains(&key.addr)
            || (self.node_addresses.contains(&key.addr)
                && (self.node_port_range.0..=self.node_port_range.1).contains(&key.port))
    }
}

/// Real servers on their way out: when each went to weight 0.
#[derive(Clone, Debug, Default)]
pub struct Draining {
    pub since: BTreeMap<(ServiceKey, SocketAddr), Instant>,
}

impl Draining {
    pub fn keys(&self) -> BTreeSet<ServiceKey> {
        self.since.keys().map(|(k, _)| *k).collect()
    }
}

/// Counts of what one reconciliation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: usize,
    pub services_added: usize,
    pub services_deleted: usize,
    pub dests_added: usize,
    pub dests_drained: usize,
    pub dests_deleted: usize,
    /// Virtual servers of ours someone else deleted, changed or added, put
    /// right (only counted against a `previous` desired state).
    pub repaired_services: usize,
    /// Real servers of ours someone else deleted or changed, or added to our
    /// virtual servers, put right.
    pub repaired_dests: usize,
}

/// Reconciles the virtual servers in `keys` (plus every draining one):
/// dumps them, computes the ordered operations and executes them.
/// `None` for `keys` means every desired and every owned virtual server (full sync).
pub fn reconcile(
    ipvs: &mut dyn Ipvs,
    desired: &Desired,
    keys: Option<&BTreeSet<ServiceKey>>,
    owner: &Ownership,
    draining: &mut Draining,
    grace: Duration,
    now: Instant,
) -> Result<Stats, ClientError> {
    reconcile_with(ipvs, desired, None, keys, owner, draining, grace, now)
}

/// [`reconcile`], also counting as repairs (drift) what differs from
/// `previous`, the desired state of the last successful sync, in virtual
/// servers and real servers the plans did not change since.
#[allow(clippy::too_many_arguments, reason = "reconcile's inputs plus the state the drift is measured against")]
pub fn reconcile_with(
    ipvs: &mut dyn Ipvs,
    desired: &Desired,
    previous: Option<&Desired>,
    keys: Option<&BTreeSet<ServiceKey>>,
    owner: &Ownership,
    draining: &mut Draining,
    grace: Duration,
    now: Instant,
) -> Result<Stats, ClientError> {
    let current: BTreeMap<ServiceKey, VirtualServer> = ipvs.services()?.into_iter().map(|vs| (vs.key, vs)).collect();
    let mut todo: BTreeSet<ServiceKey> = match keys {
        Some(k) => k.clone(),
        None => desired.services.keys().copied().chain(current.keys().copied().filter(|k| owner.owns(k))).collect(),
    };
    todo.extend(draining.keys());
    // A full sync reads every real server at once when it can.
    let mut all_dests = if keys.is_none() { ipvs.all_dests() } else { None };
    let mut ops = Vec::new();
    let mut stats = Stats::default();
    // Draining entries of virtual servers that are gone are forgotten.
    draining
        .since
        .retain(|(k, _), _| !todo.contains(k) || (current.contains_key(k) && desired.services.contains_key(k)));
    // Drift is measured where the plans did not change the virtual server.
    let unchanged = |key: &ServiceKey, want: Option<&DesiredService>| {
        previous.is_some_and(|p| p.services.get(key).map(|d| (&d.vs, &d.dests)) == want.map(|w| (&w.vs, &w.dests)))
    };
    let draining_before: BTreeSet<(ServiceKey, SocketAddr)> = draining.since.keys().copied().collect();
    for key in &todo {
        let want = desired.services.get(key);
        let drift = unchanged(key, want);
        match (want, current.get(key)) {
            (Some(want), None) => {
                ops.push(Request::NewService(want.vs.clone()));
                stats.services_added += 1;
                if drift {
                    stats.repaired_services += 1;
                }
                for d in &want.dests {
                    ops.push(Request::NewDest(*key, RealServer::nat(d.ip(), d.port(), WEIGHT)));
                    stats.dests_added += 1;
                }
            }
            (Some(want), Some(have)) => {
                if *have != want.vs {
                    ops.push(Request::SetService(want.vs.clone()));
                    if drift {
                        stats.repaired_services += 1;
                    }
                }
                let dests = match all_dests.as_mut().and_then(|all| all.remove(key)) {
                    Some(d) => d,
                    None => ipvs.dests(key)?,
                };
                if drift {
                    stats.repaired_dests += dest_drift(key, want, &dests, &draining_before);
                }
                dest_ops(key, want, &dests, draining, grace, now, &mut ops, &mut stats);
            }
            (None, Some(_)) if owner.owns(key) => {
                ops.push(Request::DelService(*key));
                stats.services_deleted += 1;
                // Ours by address but never written by this process: someone added it.
                if drift {
                    stats.repaired_services += 1;
                }
            }
            _ => {}
        }
    }
    stats.requests = ops.len();
    ipvs.execute(&ops)?;
    Ok(stats)
}

/// Real servers of a virtual server the plans did not change that differ
/// from what we wrote: missing, with another weight or forwarding method,
/// or added by someone (not one of ours draining).
fn dest_drift(
    key: &ServiceKey,
    want: &DesiredService,
    have: &[RealServer],
    draining: &BTreeSet<(ServiceKey, SocketAddr)>,
) -> usize {
    let have_by_addr: BTreeMap<SocketAddr, &RealServer> = have.iter().map(|r| (r.socket_addr(), r)).collect();
    let wrong = want
        .dests
        .iter()
        .filter(|d| match have_by_addr.get(d) {
            None => true,
            Some(rs) => rs.weight != WEIGHT || rs.fwd_method != crate::message::CONN_F_MASQ,
        })
        .count();
    let added = have
        .iter()
        .filter(|rs| !want.dests.contains(&rs.socket_addr()) && !draining.contains(&(*key, rs.socket_addr())))
        .count();
    wrong + added
}

#[allow(clippy::too_many_arguments, reason = "one step of reconcile, kept apart for readability")]
fn dest_ops(
    key: &ServiceKey,
    want: &DesiredService,
    have: &[RealServer],
    draining: &mut Draining,
    grace: Duration,
    now: Instant,
    ops: &mut Vec<Request>,
    stats: &mut Stats,
) {
    let have_by_addr: BTreeMap<SocketAddr, &RealServer> = have.iter().map(|r| (r.socket_addr(), r)).collect();
    for d in &want.dests {
        match have_by_addr.get(d) {
            None => {
                ops.push(Request::NewDest(*key, RealServer::nat(d.ip(), d.port(), WEIGHT)));
                stats.dests_added += 1;
            }
            Some(rs) if rs.weight != WEIGHT || rs.fwd_method != crate::message::CONN_F_MASQ => {
                ops.push(Request::SetDest(*key, RealServer::nat(d.ip(), d.port(), WEIGHT)));
                draining.since.remove(&(*key, *d));
            }
            Some(_) => {}
        }
    }
    for rs in have {
        let addr = rs.socket_addr();
        if want.dests.contains(&addr) {
            continue;
        }
        let since = *draining.since.entry((*key, addr)).or_insert(now);
        let drained = rs.active_conns == 0 && rs.inactive_conns == 0;
        // No connection left (or UDP): delete now; otherwise drain at weight 0
        // until the connections are gone or the grace period is over.
        if key.protocol == Protocol::Udp || drained || (rs.weight == 0 && now.duration_since(since) >= grace) {
            ops.push(Request::DelDest(*key, rs.addr, rs.port));
            draining.since.remove(&(*key, addr));
            stats.dests_deleted += 1;
        } else if rs.weight != 0 {
            ops.push(Request::SetDest(*key, RealServer::nat(rs.addr, rs.port, 0)));
            stats.dests_drained += 1;
        }
    }
}

/// `inspect()`: the frontends our virtual servers and sets describe.
pub fn frontend_of(key: &ServiceKey, kind: FrontendKind) -> Frontend {
    Frontend {
        kind,
        ip: (kind != FrontendKind::NodePort).then_some(key.addr),
        family: IpFamily::of(&key.addr),
        port: key.port,
        protocol: key.protocol,
    }
}

#[cfg(test)]
mod tests;
