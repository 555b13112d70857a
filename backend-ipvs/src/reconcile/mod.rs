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
    EmptyVerdict, FamilySet, Frontend, FrontendKind, IpFamily, NodePortAddresses, Protocol, Route, ServiceName,
    ServicePortPlan, Snapshot,
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

/// Everything one sync should leave in the kernel.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub services: BTreeMap<ServiceKey, DesiredService>,
    /// Addresses for switchyard0.
    pub vips: BTreeSet<IpAddr>,
    pub sets: Sets,
    /// The virtual servers of each Service (for partial syncs).
    pub by_service: BTreeMap<ServiceName, BTreeSet<ServiceKey>>,
    /// Port plans skipped (conflicting frontends), for warnings.
    pub conflicts: Vec<String>,
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
}

fn set_add(sets: &mut Sets, kind: SetKind, family: IpFamily, m: Member) {
    sets.entry((kind, family)).or_default().insert(m);
}

/// The desired state for a snapshot.
pub fn desired(snapshot: &Snapshot, inputs: &Inputs<'_>) -> Desired {
    let mut d = Desired::default();
    for plan in snapshot.port_plans() {
        if !inputs.families.contains(plan.family) {
            continue;
        }
        add_port_plan(&mut d, plan, inputs);
    }
    d
}

fn add_port_plan(d: &mut Desired, plan: &ServicePortPlan, inputs: &Inputs<'_>) {
    let family = plan.family;
    let proto = plan.protocol;
    let service = plan.name.service.clone();
    for frontend in plan.frontends() {
        let route = plan.route_for(frontend.kind, proto_class(frontend.kind));
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
            if d.services.contains_key(&key) {
                d.conflicts.push(format!("{key} is claimed by several Service ports; {} skipped", plan.name));
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
            d.services.insert(key, DesiredService { vs, dests, frontend, service: service.clone() });
            d.by_service.entry(service.clone()).or_default().insert(key);
            let member = Member::ip_port(addr, proto, frontend.port);
            let kind = match frontend.kind {
                FrontendKind::ClusterIP => SetKind::ClusterIp,
                FrontendKind::ExternalIP => SetKind::ExternalIp,
                FrontendKind::LoadBalancer => SetKind::LoadBalancer,
                FrontendKind::NodePort => SetKind::NodePort,
            };
            set_add(&mut d.sets, kind, family, member.clone());
            if frontend.kind != FrontendKind::NodePort {
                d.vips.insert(addr);
                set_add(&mut d.sets, SetKind::Vips, family, Member::ip(addr));
            }
            if frontend.kind.is_external() && plan.external_policy_local {
                set_add(&mut d.sets, SetKind::LocalPolicy, family, member.clone());
            }
            if route.empty_verdict() == Some(EmptyVerdict::Drop) {
                set_add(&mut d.sets, SetKind::Drop, family, member.clone());
            }
            if frontend.kind == FrontendKind::LoadBalancer && !plan.source_ranges.is_empty() {
                set_add(&mut d.sets, SetKind::LbFirewall, family, member.clone());
                for net in &plan.source_ranges {
                    set_add(
                        &mut d.sets,
                        SetKind::LbSource,
                        family,
                        Member::ip_port_net(addr, proto, frontend.port, *net),
                    );
                }
            }
        }
    }
    // Hairpin: a pod reaching itself through any frontend of this port.
    for route in [&plan.internal, &plan.external, &plan.external_from_cluster] {
        if let Route::Forward(eps) = route {
            for e in eps.iter() {
                set_add(&mut d.sets, SetKind::Loopback, family, Member::ip_port_ip(e.ip(), proto, e.port, e.ip()));
            }
        }
    }
}

/// The source class whose route a frontend's virtual server carries: IPVS
/// cannot pick real servers by source, so an external frontend serves
/// everyone the endpoints meant for traffic from outside the cluster.
fn proto_class(_kind: FrontendKind) -> proxy_core::SourceClass {
    proxy_core::SourceClass::External
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
    let current: BTreeMap<ServiceKey, VirtualServer> = ipvs.services()?.into_iter().map(|vs| (vs.key, vs)).collect();
    let mut todo: BTreeSet<ServiceKey> = match keys {
        Some(k) => k.clone(),
        None => desired.services.keys().copied().chain(current.keys().copied().filter(|k| owner.owns(k))).collect(),
    };
    todo.extend(draining.keys());
    let mut ops = Vec::new();
    let mut stats = Stats::default();
    // Draining entries of virtual servers that are gone are forgotten.
    draining
        .since
        .retain(|(k, _), _| !todo.contains(k) || (current.contains_key(k) && desired.services.contains_key(k)));
    for key in &todo {
        match (desired.services.get(key), current.get(key)) {
            (Some(want), None) => {
                ops.push(Request::NewService(want.vs.clone()));
                stats.services_added += 1;
                for d in &want.dests {
                    ops.push(Request::NewDest(*key, RealServer::nat(d.ip(), d.port(), WEIGHT)));
                    stats.dests_added += 1;
                }
            }
            (Some(want), Some(have)) => {
                if *have != want.vs {
                    ops.push(Request::SetService(want.vs.clone()));
                }
                let dests = ipvs.dests(key)?;
                dest_ops(key, want, &dests, draining, grace, now, &mut ops, &mut stats);
            }
            (None, Some(_)) if owner.owns(key) => {
                ops.push(Request::DelService(*key));
                stats.services_deleted += 1;
            }
            _ => {}
        }
    }
    stats.requests = ops.len();
    ipvs.execute(&ops)?;
    Ok(stats)
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
    Frontend { kind, ip: (kind != FrontendKind::NodePort).then_some(key.addr), port: key.port, protocol: key.protocol }
}

#[cfg(test)]
mod tests;
