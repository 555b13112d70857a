//! Every plan-to-kernel decision of this backend, in one place.
//!
//! The backend programs, per frontend and class of source, what
//! [`ServicePortPlan::flow_for_class`] answers (route and masquerade), plus
//! the few plan facts the packet path needs besides (source ranges,
//! affinity, hairpin sources). Nothing else in the crate reads a
//! `ServicePortPlan`: when proxy-core's precomputed flow table lands, this
//! module is what changes.

use std::net::IpAddr;

use ipnet::IpNet;
use proxy_core::{Endpoint, Frontend, FrontendKind, MasqueradeConfig, Route, ServicePortPlan, SourceClass};

/// The classes of source the packet path tells apart (see `render::classify`).
pub const CLASSES: [SourceClass; 3] = [SourceClass::Pod, SourceClass::Node, SourceClass::External];

/// What traffic of one class to one frontend gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Spread over `routes[i]` of the port.
    Forward(usize),
    Drop,
    Reject,
}

/// One frontend's decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendDecision {
    pub frontend: Frontend,
    /// Per class of [`CLASSES`], in that order: (action, masquerade).
    pub per_class: [(Action, bool); 3],
    /// Sources outside these are dropped before anything else (node traffic
    /// excepted); `None`: no filter.
    pub source_ranges: Option<Vec<IpNet>>,
}

/// One Service port's decisions, in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortDecision {
    /// The distinct endpoint lists the frontends forward to.
    pub routes: Vec<Vec<Endpoint>>,
    pub frontends: Vec<FrontendDecision>,
    pub affinity_timeout_seconds: Option<u32>,
    /// Endpoint addresses that may reach themselves through this node
    /// (hairpin: masqueraded so the reply comes back through us).
    pub hairpin: Vec<IpAddr>,
}

/// Decides everything for one port plan.
pub fn decide(p: &ServicePortPlan, masq: &MasqueradeConfig) -> PortDecision {
    let mut routes: Vec<Vec<Endpoint>> = Vec::new();
    let mut route_index = |r: &Route| -> Action {
        match r {
            Route::Forward(eps) => {
                let eps: Vec<Endpoint> = eps.to_vec();
                let i = routes.iter().position(|x| *x == eps).unwrap_or_else(|| {
                    routes.push(eps);
                    routes.len() - 1
                });
                Action::Forward(i)
            }
            Route::Drop => Action::Drop,
            Route::Reject => Action::Reject,
        }
    };
    let mut frontends = Vec::new();
    for f in p.frontends() {
        let per_class = CLASSES.map(|class| {
            let flow = p.flow_for_class(f.kind, class, masq);
            (route_index(&flow.route), flow.masquerade)
        });
        // `ServicePortPlan::source_allowed`: only load-balancer IPs are
        // filtered, by the Service's ranges, and never the node itself
        // (render applies the filter only to traffic that is not the node's).
        let source_ranges =
            (f.kind == FrontendKind::LoadBalancer && !p.source_ranges.is_empty()).then(|| p.source_ranges.clone());
        frontends.push(FrontendDecision { frontend: f, per_class, source_ranges });
    }
    // Hairpin (`Flow::masquerades_to`): an endpoint reaching itself. Only
    // endpoints that can send through this node: local ones, and ones
    // without a node name (we cannot tell where they run), as the iptables
    // backend does.
    let mut hairpin: Vec<IpAddr> =
        routes.iter().flatten().filter(|e| e.is_local || e.info.node_name.is_none()).map(|e| e.ip()).collect();
    hairpin.sort();
    hairpin.dedup();
    PortDecision { routes, frontends, affinity_timeout_seconds: p.affinity_timeout_seconds, hairpin }
}
