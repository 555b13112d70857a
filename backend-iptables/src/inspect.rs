//! Reading the kernel back into a backend-neutral [`ProgrammedState`].
//!
//! Frontends are found by their rule comments (`<service port> <kind>`) in
//! our chains; what each one does is found by tracing a packet to it with
//! [`crate::trace`]: from outside the cluster (`endpoints`, `empty_verdict`)
//! and from the node itself (`cluster_endpoints`, for external frontends with
//! externalTrafficPolicy Local). Nothing comes from the backend's memory.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use proxy_core::{
    EmptyVerdict, Frontend, FrontendKind, IpFamily, NodePortAddresses, ProgrammedFrontend, ProgrammedState, Protocol,
};

use crate::error::Error;
use crate::names;
use crate::parse::{Cond, Ruleset, parse_rule};
use crate::render::parse_frontend_comment;
use crate::trace::{Host, Packet, Tracer, Verdict};

/// What inspection needs to know about the node (configuration, not state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InspectContext {
    pub family: IpFamily,
    pub cluster_cidrs: Vec<IpNet>,
    pub node_ips: Vec<IpAddr>,
    pub nodeport_addresses: NodePortAddresses,
}

struct Found {
    service: String,
    /// A source that passes the frontend's loadBalancerSourceRanges, if it has some.
    allowed_source: Option<IpAddr>,
}

fn first_source(rs: &Ruleset, table: crate::restore::Table, chain: &str) -> Option<IpAddr> {
    rs.table(table)?.rules(chain).iter().find_map(|r| {
        let p = parse_rule(r).ok()?;
        p.matches.iter().find_map(|m| match (&m.cond, m.negated) {
            (Cond::Source(net), false) => Some(net.network()),
            _ => None,
        })
    })
}

fn frontends(rs: &Ruleset, family: IpFamily) -> BTreeMap<Frontend, Found> {
    let mut out: BTreeMap<Frontend, Found> = BTreeMap::new();
    for (table, t) in &rs.tables {
        for (chain, c) in &t.chains {
            if !names::is_ours(chain) {
                continue;
            }
            for text in &c.rules {
                let Ok(rule) = parse_rule(text) else { continue };
                let Some((service, kind)) = rule.comment().and_then(parse_frontend_comment) else { continue };
                let proto = rule.matches.iter().find_map(|m| match &m.cond {
                    Cond::Protocol(p) => Protocol::parse(&p.to_uppercase()),
                    _ => None,
                });
                let port = rule.matches.iter().find_map(|m| match &m.cond {
                    Cond::DPort(lo, hi) if lo == hi => Some(*lo),
                    _ => None,
                });
                let ip = rule.matches.iter().find_map(|m| match (&m.cond, m.negated) {
                    (Cond::Destination(net), false) if net.prefix_len() == net.max_prefix_len() => Some(net.addr()),
                    _ => None,
                });
                let (Some(protocol), Some(port)) = (proto, port) else { continue };
                let ip = if kind == FrontendKind::NodePort {
                    None
                } else if ip.is_some() {
                    ip
                } else {
                    continue;
                };
                let frontend = Frontend { kind, ip, family, port, protocol };
                let allowed_source = rule
                    .chain_target()
                    .filter(|c| c.starts_with("SWITCHYARD-FW-") || c.starts_with("SWITCHYARD-FWR-"))
                    .and_then(|c| first_source(rs, *table, c));
                let entry = out.entry(frontend).or_insert(Found { service, allowed_source: None });
                if entry.allowed_source.is_none() {
                    entry.allowed_source = allowed_source;
                }
            }
        }
    }
    out
}

fn outside_address(family: IpFamily, cidrs: &[IpNet]) -> IpAddr {
    let candidates: [IpAddr; 3] = match family {
        IpFamily::V4 => [
            Ipv4Addr::new(203, 0, 113, 1).into(),
            Ipv4Addr::new(198, 51, 100, 1).into(),
            Ipv4Addr::new(192, 0, 2, 1).into(),
        ],
        IpFamily::V6 => [
            "2001:db8:ffff::1".parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::UNSPECIFIED).into(),
            "2001:db8:fffe::1".parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::UNSPECIFIED).into(),
            "2001:db8:fffd::1".parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::UNSPECIFIED).into(),
        ],
    };
    candidates.into_iter().find(|ip| !cidrs.iter().any(|c| c.contains(ip))).unwrap_or(candidates[0])
}

fn synthetic_node_address(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => Ipv4Addr::new(192, 0, 2, 254).into(),
        IpFamily::V6 => "2001:db8:ffff::fe".parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::LOCALHOST).into(),
    }
}

/// Reads one family's ruleset (nat and filter) into frontends and what they reach.
pub fn programmed_state(rs: &Ruleset, ctx: &InspectContext) -> Result<ProgrammedState, Error> {
    let family = ctx.family;
    let node_ips: Vec<IpAddr> = ctx.node_ips.iter().copied().filter(|ip| IpFamily::of(ip) == family).collect();
    let node_src = node_ips.first().copied().unwrap_or_else(|| synthetic_node_address(family));
    let nodeport_dst = match &ctx.nodeport_addresses {
        NodePortAddresses::All | NodePortAddresses::Primary => node_src,
        NodePortAddresses::Cidrs(cidrs) => {
            let cidrs: Vec<&IpNet> =
                cidrs.iter().filter(|c| matches!(c, IpNet::V4(_)) == (family == IpFamily::V4)).collect();
            node_ips
                .iter()
                .copied()
                .find(|ip| cidrs.iter().any(|c| c.contains(ip)))
                .or_else(|| cidrs.first().map(|c| c.network()))
                .unwrap_or(node_src)
        }
    };
    let host = Host::new(node_ips.iter().copied().chain([node_src, nodeport_dst]));
    let tracer = Tracer::new(rs, &host);
    let outside = outside_address(family, &ctx.cluster_cidrs);
    let mut state = ProgrammedState::default();
    for (frontend, found) in frontends(rs, family) {
        let dst = frontend.ip.unwrap_or(nodeport_dst);
        let packet = |src, from_node| Packet { src, dst, protocol: frontend.protocol, dport: frontend.port, from_node };
        let outside_src =
            if frontend.kind == FrontendKind::LoadBalancer { found.allowed_source.unwrap_or(outside) } else { outside };
        let ext = tracer.trace(&packet(outside_src, false), &BTreeSet::new())?;
        let reached = |outcomes: &[crate::trace::Outcome]| -> BTreeSet<SocketAddr> {
            outcomes.iter().filter(|o| o.verdict == Verdict::Accept).filter_map(|o| o.dnat).collect()
        };
        let endpoints = reached(&ext);
        let empty_verdict = if !endpoints.is_empty() {
            None
        } else if ext.iter().any(|o| o.verdict == Verdict::Reject) {
            Some(EmptyVerdict::Reject)
        } else if ext.iter().any(|o| o.verdict == Verdict::Drop) {
            Some(EmptyVerdict::Drop)
        } else {
            None
        };
        let cluster_endpoints = if frontend.kind == FrontendKind::ClusterIP {
            None
        } else {
            let from_node = tracer.trace(&packet(node_src, true), &BTreeSet::new())?;
            let set = reached(&from_node);
            (set != endpoints).then_some(set)
        };
        let affinity_timeout_seconds = ext.iter().filter_map(|o| o.affinity_seconds).max();
        state.frontends.insert(
            frontend,
            ProgrammedFrontend {
                service: Some(found.service),
                endpoints,
                cluster_endpoints,
                empty_verdict,
                affinity_timeout_seconds,
            },
        );
    }
    Ok(state)
}
