//! A packet tracer over rendered maps (not a fake of the kernel: that is
//! [`crate::fake`]): the decisions `swy_tc_ingress` takes
//! for the first packet of a flow, in Rust, over [`Desired`] map contents.
//!
//! It lets the unit tests check, without a kernel, that what we write into
//! the maps makes the programs do what `ServicePortPlan::flow` says. Keep
//! it in step with `bpf/switchyard.c` (frontend lookup, source class,
//! source ranges, route verdict, masquerade bit).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use proxy_core::Protocol;

use crate::layout::{self, Addr, SrcRangeData, SvcKey, SvcVal};
use crate::render::Desired;

/// What happens to the first packet of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Traced {
    /// Not a frontend: the packet passes untouched.
    Pass,
    Forward {
        endpoints: BTreeSet<SocketAddr>,
        masquerade: bool,
    },
    Reject,
    Drop,
}

/// The maps of one node, in memory.
#[derive(Clone, Debug)]
pub struct Tracer {
    pub desired: Desired,
    /// `swy_node_addrs`.
    pub node_addrs: BTreeMap<Addr, u32>,
}

fn in_prefix(addr: &[u8], net: &[u8], bits: u32) -> bool {
    let full = (bits / 8) as usize;
    if addr[..full] != net[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || (addr[full] >> (8 - rest)) == (net[full] >> (8 - rest))
}

impl Tracer {
    fn frontend(&self, dst: Addr, port: u16, proto: u8) -> Option<&SvcVal> {
        let key = SvcKey { addr: dst, port: port.to_be(), proto, scope: layout::SCOPE_ADDR };
        if let Some(v) = self.desired.frontends.get(&key) {
            return Some(v);
        }
        let flags = self.node_addrs.get(&dst)?;
        if flags & layout::NODE_NODEPORT == 0 {
            return None;
        }
        let unspecified = match dst.to_ip() {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        self.desired.frontends.get(&SvcKey { addr: Addr::from(unspecified), scope: layout::SCOPE_NODEPORT, ..key })
    }

    fn class(&self, src: Addr) -> usize {
        if self.node_addrs.get(&src).is_some_and(|f| f & layout::NODE_ADDR != 0) {
            return layout::CLASS_NODE;
        }
        let o = src.octets();
        if self.desired.cluster_cidrs.iter().any(|(bits, net)| in_prefix(&o, &net.octets(), *bits)) {
            return layout::CLASS_POD;
        }
        layout::CLASS_EXTERNAL
    }

    fn source_allowed(&self, val: &SvcVal, src: Addr) -> bool {
        let id = layout::id_words(val.id);
        let o = src.octets();
        self.desired
            .source_ranges
            .iter()
            .any(|(bits, SrcRangeData { id: rid, addr })| *rid == id && in_prefix(&o, &addr.octets(), bits - 64))
    }

    /// Traces a new flow from `src` to `dst:port`.
    pub fn trace(&self, src: IpAddr, dst: IpAddr, port: u16, proto: Protocol) -> Traced {
        let (src, dst) = (Addr::from(src), Addr::from(dst));
        let Some(val) = self.frontend(dst, port, proto.number()) else { return Traced::Pass };
        let class = self.class(src);
        if (val.ranges >> class) & 1 == 1 && !self.source_allowed(val, src) {
            return Traced::Drop;
        }
        let Some(route) = self.desired.routes.get(&val.route[class]) else { return Traced::Drop };
        match route.verdict {
            layout::REJECT => Traced::Reject,
            layout::DROP => Traced::Drop,
            _ if route.backends.is_empty() => Traced::Drop,
            _ => Traced::Forward {
                endpoints: route
                    .backends
                    .iter()
                    .map(|b| SocketAddr::new(b.addr.to_ip(), u16::from_be(b.port)))
                    .collect(),
                masquerade: (val.masq >> class) & 1 == 1,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{RenderOptions, render};
    use crate::testutil::*;
    use proxy_core::{FrontendKind, Route, SourceClass};

    /// Every frontend of the sample, from every class of source: the traced
    /// decision equals `ServicePortPlan::flow`.
    #[test]
    fn traced_flows_match_the_planner() {
        let snap = sample_snapshot();
        let desired = render(&snap, &RenderOptions::default());
        let node_ip: IpAddr = NODE_IP.parse().expect("ip");
        let node_addrs = BTreeMap::from([(Addr::from(node_ip), layout::NODE_ADDR | layout::NODE_NODEPORT)]);
        let tracer = Tracer { desired, node_addrs };
        let sources: [(IpAddr, SourceClass); 4] = [
            ("203.0.113.9".parse().expect("ip"), SourceClass::External),
            ("198.18.0.1".parse().expect("ip"), SourceClass::External),
            ("10.244.3.3".parse().expect("ip"), SourceClass::Pod),
            (node_ip, SourceClass::Node),
        ];
        let mut checked = 0;
        for plan in snap.port_plans() {
            for frontend in plan.frontends() {
                let dst = frontend.ip.unwrap_or(node_ip);
                for (src, class) in sources {
                    let flow = plan.flow(frontend.kind, src, class, snap.masquerade());
                    let want = match &flow.route {
                        Route::Forward(eps) => Traced::Forward {
                            endpoints: eps.iter().map(|e| e.addr()).collect(),
                            masquerade: flow.masquerade,
                        },
                        Route::Reject => Traced::Reject,
                        Route::Drop => Traced::Drop,
                    };
                    let got = tracer.trace(src, dst, frontend.port, frontend.protocol);
                    assert_eq!(got, want, "{frontend} from {src} ({class:?}) of {}", plan.name);
                    checked += 1;
                }
                let _ = FrontendKind::ClusterIP;
            }
        }
        assert!(checked > 40, "only {checked} flows checked");
    }
}
