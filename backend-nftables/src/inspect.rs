//! Reading our table back into a backend-neutral [`ProgrammedState`]
//! (never the backend's memory): the frontend maps, the endpoint map.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proxy_core::{
    EmptyVerdict, FamilySet, Frontend, FrontendKind, IpFamily, ProgrammedFrontend, ProgrammedState, Protocol,
};

use crate::client::Kernel;
use crate::error::Error;
use crate::netlink::ElemData;
use crate::render::{self, ACTION_DROP, ACTION_FORWARD, ACTION_REJECT, CLASS_EXTERNAL, CLASS_POD, alen, sets};

fn protocol(n: u8) -> Option<Protocol> {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp].into_iter().find(|p| p.number() == n)
}

fn ip(family: IpFamily, b: &[u8]) -> Option<IpAddr> {
    Some(match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b.get(..16)?).ok()?)),
    })
}

fn port_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

/// What one (frontend, class) element says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ClassEntry {
    behaviour: render::Behaviour,
    /// The frontend's destination bytes (address or 0, protocol, port).
    dest: Vec<u8>,
    service: String,
}

/// The state of every family's table.
pub fn programmed_state(kernel: &dyn Kernel, families: FamilySet) -> Result<ProgrammedState, Error> {
    let mut out = ProgrammedState::default();
    for family in families.iter() {
        if !kernel.table(family)?.exists {
            continue;
        }
        let a = alen(family) as usize;
        // Endpoints by destination and route (the key without the slot).
        let mut routes: BTreeMap<Vec<u8>, BTreeSet<SocketAddr>> = BTreeMap::new();
        for e in kernel.elements(family, sets::ENDPOINTS)? {
            let (Some(prefix), ElemData::Value(d)) = (e.key.get(..a + 12), &e.data) else { continue };
            if let (Some(addr), Some(port)) = (ip(family, d), port_at(d, a)) {
                routes.entry(prefix.to_vec()).or_default().insert(SocketAddr::new(addr, port));
            }
        }
        let mut frontends: BTreeMap<Frontend, BTreeMap<u32, ClassEntry>> = BTreeMap::new();
        for e in kernel.elements(family, sets::FRONTENDS)? {
            let Some((behaviour, dest)) = render::parse_frontend_key(&e.key) else { continue };
            let ud = e.userdata.clone().unwrap_or_default();
            let Some(kind) = ud.first().and_then(|c| render::kind_of_char(*c)) else { continue };
            let service = String::from_utf8_lossy(&ud[1..]).into_owned();
            let (Some(proto), Some(port)) = (dest.get(a).and_then(|n| protocol(*n)), port_at(dest, a + 4)) else {
                continue;
            };
            let frontend = if kind == FrontendKind::NodePort {
                Frontend::node_port(family, port, proto)
            } else {
                let Some(addr) = ip(family, dest) else { continue };
                Frontend::at(kind, addr, port, proto)
            };
            frontends
                .entry(frontend)
                .or_default()
                .insert(behaviour.class, ClassEntry { behaviour, dest: dest.to_vec(), service });
        }
        for (frontend, classes) in frontends {
            let Some(ext) = classes.get(&CLASS_EXTERNAL) else { continue };
            let view = |c: &ClassEntry| -> (Option<EmptyVerdict>, BTreeSet<SocketAddr>) {
                match c.behaviour.action {
                    ACTION_FORWARD => {
                        let mut prefix = c.dest.clone();
                        prefix.extend(c.behaviour.route.to_ne_bytes());
                        (None, routes.get(&prefix).cloned().unwrap_or_default())
                    }
                    ACTION_DROP => (Some(EmptyVerdict::Drop), BTreeSet::new()),
                    ACTION_REJECT => (Some(EmptyVerdict::Reject), BTreeSet::new()),
                    _ => (None, BTreeSet::new()),
                }
            };
            let (empty_verdict, endpoints) = view(ext);
            let cluster_endpoints = (frontend.kind != FrontendKind::ClusterIP)
                .then(|| classes.get(&CLASS_POD).map(view))
                .flatten()
                .filter(|pod| *pod != (empty_verdict, endpoints.clone()))
                .map(|pod| pod.1);
            out.frontends.insert(
                frontend,
                ProgrammedFrontend {
                    service: Some(ext.service.clone()),
                    endpoints,
                    cluster_endpoints,
                    empty_verdict,
                    affinity_timeout_seconds: (ext.behaviour.timeout > 0).then_some(ext.behaviour.timeout),
                },
            );
        }
    }
    Ok(out)
}
