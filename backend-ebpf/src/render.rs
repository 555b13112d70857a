//! Rendering: a snapshot's plans become the desired contents of the maps.
//!
//! Pure and kernel-free. Semantics come from the plans: the route of each
//! source class is `ServicePortPlan::route_for`, masquerading is
//! `ServicePortPlan::flow`; nothing here re-decides what a Service means.
//!
//! Routes (endpoint sets) are identified by a stable 64-bit hash of
//! (family, Service port, which set), so that ids survive restarts and a
//! one-endpoint change rewrites one route and nothing else. Within a port the
//! internal, external and external-from-cluster sets share an id exactly
//! when they are equal.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proxy_core::{
    FlowTable, FrontendKind, IpFamily, MasqueradeConfig, Route, ServiceName, ServicePlan, ServicePortPlan, Snapshot,
    SourceClass,
};

use crate::layout::{self, Addr, Backend, SrcRangeData, SvcKey, SvcVal};

/// What rendering needs besides the snapshot.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Maglev for every Service.
    pub maglev_all: bool,
    /// Maglev for these Services (`namespace/name`).
    pub maglev_services: BTreeSet<String>,
}

/// One endpoint set as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub verdict: u8,
    pub flags: u8,
    /// Slot order.
    pub backends: Vec<Backend>,
}

impl RouteSpec {
    pub fn maglev(&self) -> bool {
        self.flags & layout::ROUTE_MAGLEV != 0
    }
}

/// The desired contents of the service maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub frontends: BTreeMap<SvcKey, SvcVal>,
    pub routes: BTreeMap<u64, RouteSpec>,
    /// (prefix length including the 64-bit frontend id, data).
    pub source_ranges: BTreeSet<(u32, SrcRangeData)>,
    /// (prefix length in v4-mapped bits, network).
    pub cluster_cidrs: BTreeSet<(u32, Addr)>,
    /// Frontends two Service ports claim: not rendered (logged and counted).
    pub skipped: Vec<String>,
    /// Frontends the datapath cannot serve, with the reason (logged and counted).
    pub unsupported: Vec<String>,
    /// What each Service contributes (frontends, routes, source ranges;
    /// no cluster CIDRs), so that a partial sync can replace one Service's
    /// share without rendering the others.
    pub by_service: BTreeMap<ServiceName, Desired>,
}

/// One Service's share of the maps as the dataplane keeps it between syncs:
/// the frontends, routes and source ranges of its [`Desired`], in sorted
/// boxed slices. A B-tree node has room for 11 entries however few it holds,
/// so a Service's share as `Desired` took about 1.6 KiB, 16 MiB at 10,000
/// Services; this form about a third of that (issue 16).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Share {
    frontends: Box<[(SvcKey, SvcVal)]>,
    routes: Box<[(u64, RouteSpec)]>,
    source_ranges: Box<[(u32, SrcRangeData)]>,
}

impl Share {
    /// Keeps a Service's share (its other fields are empty for a share).
    pub fn new(part: Desired) -> Share {
        Share {
            frontends: part.frontends.into_iter().collect(),
            routes: part
                .routes
                .into_iter()
                .map(|(id, mut r)| {
                    r.backends.shrink_to_fit();
                    (id, r)
                })
                .collect(),
            source_ranges: part.source_ranges.into_iter().collect(),
        }
    }

    /// The share as the `Desired` it was made from.
    pub fn desired(&self) -> Desired {
        Desired {
            frontends: self.frontends.iter().copied().collect(),
            routes: self.routes.iter().cloned().collect(),
            source_ranges: self.source_ranges.iter().copied().collect(),
            ..Desired::default()
        }
    }

    pub fn frontend_keys(&self) -> impl Iterator<Item = &SvcKey> {
        self.frontends.iter().map(|(k, _)| k)
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.routes.is_empty()
    }
}

impl Desired {
    /// Adds `part` (one Service's share), skipping frontends another
    /// Service already claims; returns whether anything was skipped.
    fn merge(&mut self, part: &Desired) -> bool {
        let mut contested = false;
        for (key, val) in &part.frontends {
            if self.frontends.get(key).is_some_and(|v| v != val) {
                contested = true;
                continue;
            }
            self.frontends.insert(*key, *val);
        }
        for (id, spec) in &part.routes {
            self.routes.entry(*id).or_insert_with(|| spec.clone());
        }
        self.source_ranges.extend(part.source_ranges.iter().copied());
        contested
    }
}

/// FNV-1a, 64 bits: stable across builds and restarts (unlike `DefaultHasher`).
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn route_id(plan: &ServicePortPlan, tag: &str) -> u64 {
    fnv64(format!("route|{}|{:?}|{tag}", plan.family, plan.name).as_bytes()).max(1)
}

fn frontend_id(key: &SvcKey) -> u64 {
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(&key.addr.octets());
    bytes.extend_from_slice(&key.port.to_ne_bytes());
    bytes.push(key.proto);
    bytes.push(key.scope);
    fnv64(&bytes)
}

/// The prefix length of a network in v4-mapped bits.
pub fn mapped_prefix(net: &ipnet::IpNet) -> u32 {
    match net {
        ipnet::IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
        ipnet::IpNet::V6(n) => u32::from(n.prefix_len()),
    }
}

fn kind_code(kind: FrontendKind) -> u8 {
    match kind {
        FrontendKind::ClusterIP => layout::KIND_CLUSTER_IP,
        FrontendKind::ExternalIP => layout::KIND_EXTERNAL_IP,
        FrontendKind::LoadBalancer => layout::KIND_LOAD_BALANCER,
        FrontendKind::NodePort => layout::KIND_NODE_PORT,
    }
}

/// The frontend kind a `swy_svc_val.kind` stands for.
pub fn kind_of(code: u8) -> Option<FrontendKind> {
    match code {
        layout::KIND_CLUSTER_IP => Some(FrontendKind::ClusterIP),
        layout::KIND_EXTERNAL_IP => Some(FrontendKind::ExternalIP),
        layout::KIND_LOAD_BALANCER => Some(FrontendKind::LoadBalancer),
        layout::KIND_NODE_PORT => Some(FrontendKind::NodePort),
        _ => None,
    }
}

const CLASSES: [(usize, SourceClass); 3] = [
    (layout::CLASS_EXTERNAL, SourceClass::External),
    (layout::CLASS_POD, SourceClass::Pod),
    (layout::CLASS_NODE, SourceClass::Node),
];

fn route_spec(route: &Route, maglev: bool, table: &FlowTable) -> RouteSpec {
    match route {
        Route::Forward(eps) => RouteSpec {
            verdict: layout::FORWARD,
            flags: if maglev { layout::ROUTE_MAGLEV } else { 0 },
            backends: eps
                .iter()
                .map(|e| Backend {
                    addr: Addr::from(e.ip()),
                    port: e.port.to_be(),
                    flags: if table.is_hairpin(&e.addr()) { layout::BACKEND_HAIRPIN } else { 0 },
                })
                .collect(),
        },
        Route::Reject => RouteSpec { verdict: layout::REJECT, flags: 0, backends: Vec::new() },
        Route::Drop => RouteSpec { verdict: layout::DROP, flags: 0, backends: Vec::new() },
    }
}

/// Renders every Service of the snapshot.
pub fn render(snapshot: &Snapshot, opts: &RenderOptions) -> Desired {
    let mut out = Desired::default();
    let masq = snapshot.masquerade();
    for net in &masq.cluster_cidrs {
        out.cluster_cidrs.insert((mapped_prefix(net), Addr::from(net.network())));
    }
    for service in snapshot.services() {
        let mut part = render_service(service, masq, opts);
        // The planner serves a contested frontend from one Service only
        // (`proxy_core::contest`); a clash here is a bug, reported, never decided.
        if out.merge(&part) {
            part.skipped.push(format!("a frontend of Service {} is also claimed by another Service", service.name()));
        }
        out.skipped.extend(part.skipped.iter().cloned());
        out.unsupported.extend(part.unsupported.iter().cloned());
        out.by_service.insert(service.name().clone(), part);
    }
    out
}

/// Renders one Service: its share of the maps (no cluster CIDRs).
pub fn render_service(service: &ServicePlan, masq: &MasqueradeConfig, opts: &RenderOptions) -> Desired {
    let mut out = Desired::default();
    for plan in &service.ports {
        render_port(plan, masq, opts, &mut out);
    }
    out
}

fn render_port(plan: &ServicePortPlan, masq: &MasqueradeConfig, opts: &RenderOptions, out: &mut Desired) {
    let maglev = opts.maglev_all || opts.maglev_services.contains(&plan.name.service.to_string());
    // The core's decisions for this port, rendered verbatim: routes by name,
    // masquerade and source ranges per class of source, the hairpin set.
    let table = plan.flow_table(masq);
    let unspecified = match plan.family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    // SCTP's CRC32c covers the ports and cannot be fixed incrementally:
    // the datapath translates SCTP addresses only.
    let sctp_port_change =
        plan.protocol == proxy_core::Protocol::Sctp && table.endpoints().any(|e| e.port != plan.port);
    for f in &table.frontends {
        let frontend = f.frontend;
        if frontend.protocol == proxy_core::Protocol::Sctp
            && (sctp_port_change || frontend.kind == FrontendKind::NodePort)
        {
            out.unsupported.push(format!(
                "{frontend} of {}: SCTP port translation is not supported (the CRC32c covers the ports)",
                plan.name
            ));
            continue;
        }
        let key = SvcKey {
            // Node ports: the family's unspecified address (v4 and v6 must not collide).
            addr: Addr::from(frontend.ip.unwrap_or(unspecified)),
            port: frontend.port.to_be(),
            proto: frontend.protocol.number(),
            scope: if frontend.kind == FrontendKind::NodePort { layout::SCOPE_NODEPORT } else { layout::SCOPE_ADDR },
        };
        let mut val = SvcVal {
            kind: kind_code(frontend.kind),
            affinity_timeout: plan.affinity_timeout_seconds.unwrap_or(0),
            ..SvcVal::default()
        };
        for (idx, class) in CLASSES {
            let cell = f.class(class);
            let id = route_id(plan, cell.route.as_str());
            val.route[idx] = id;
            out.routes.entry(id).or_insert_with(|| route_spec(table.route(cell.route), maglev, &table));
            if cell.masquerade {
                val.masq |= 1 << idx;
            }
            if cell.source_ranges {
                val.ranges |= 1 << idx;
            }
        }
        if val.ranges != 0 {
            val.id = frontend_id(&key);
            let id = crate::layout::id_words(val.id);
            for net in &table.source_ranges {
                out.source_ranges
                    .insert((64 + mapped_prefix(net), SrcRangeData { id, addr: Addr::from(net.network()) }));
            }
        }
        if let Some(existing) = out.frontends.get(&key)
            && existing != &val
        {
            out.skipped.push(format!("{frontend} of {} is also claimed by another Service port", plan.name));
            continue;
        }
        out.frontends.insert(key, val);
    }
}

/// Maglev lookup table (Eisenbud et al., NSDI 2016) over `backends`: slot
/// index per table entry. Deterministic for a given backend list.
pub fn maglev_table(backends: &[Backend]) -> Vec<u32> {
    let m = layout::MAGLEV_M as u64;
    let mut table = vec![u32::MAX; layout::MAGLEV_M];
    if backends.is_empty() {
        return vec![0; layout::MAGLEV_M];
    }
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let mut name = b.addr.octets().to_vec();
            name.extend_from_slice(&b.port.to_ne_bytes());
            let offset = fnv64(&name) % m;
            name.push(0x5a);
            let skip = fnv64(&name) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut filled = 0;
    'outer: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while table[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            table[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == layout::MAGLEV_M {
                break 'outer;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_spreads_evenly_and_moves_little() {
        let be = |i: u8| Backend { addr: Addr::from(Ipv4Addr::new(10, 0, 0, i)), port: 80u16.to_be(), flags: 0 };
        let three: Vec<Backend> = (1..=3).map(be).collect();
        let t3 = maglev_table(&three);
        for i in 0..3 {
            let n = t3.iter().filter(|s| **s == i).count();
            assert!((300..=380).contains(&n), "backend {i} has {n} of 1021 entries");
        }
        let four: Vec<Backend> = (1..=4).map(be).collect();
        let t4 = maglev_table(&four);
        let moved = t3.iter().zip(&t4).filter(|(a, b)| a != b && **b != 3).count();
        assert!(moved < 150, "{moved} entries moved between surviving backends");
    }

    /// SCTP is translated by address only: frontends whose endpoints use
    /// another port (and node ports) are left out, with the reason.
    #[test]
    fn sctp_needs_the_same_port() {
        use crate::testutil::{masq, slice_of, snapshot};
        use proxy_core::testing::{ServiceBuilder, endpoint};
        let services = vec![
            ServiceBuilder::new("default", "same", "10.96.0.70").port("", 7777, "SCTP").build(),
            ServiceBuilder::new("default", "moved", "10.96.0.71").port("", 7777, "SCTP").build(),
        ];
        let slices = vec![
            slice_of("same-1", "same", 7777, "SCTP", vec![endpoint("10.244.1.5")]),
            slice_of("moved-1", "moved", 8888, "SCTP", vec![endpoint("10.244.1.5")]),
        ];
        let desired = render(&snapshot(services, slices, masq()), &RenderOptions::default());
        assert_eq!(desired.frontends.len(), 1, "{:?}", desired.frontends);
        assert_eq!(desired.unsupported.len(), 1, "{:?}", desired.unsupported);
        assert!(desired.unsupported[0].contains("default/moved"), "{:?}", desired.unsupported);
    }

    #[test]
    fn route_ids_are_stable() {
        // Published FNV-1a test vectors: ids must not change between builds.
        assert_eq!(fnv64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
