//! Every plan-to-kernel decision of this backend, in one place.
//!
//! The backend programs proxy-core's flow table verbatim: per frontend and
//! class of source, the named route and masquerade; which frontends filter
//! by source range; the hairpin set. Nothing else in the crate reads a
//! `ServicePortPlan`.

use std::net::IpAddr;

use ipnet::IpNet;
use proxy_core::flows::RouteId;
use proxy_core::{Endpoint, Frontend, MasqueradeConfig, Route, ServicePortPlan, SourceClass};

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

/// Decides everything for one port plan: proxy-core's flow table
/// ([`ServicePortPlan::flow_table`]) in the shape this backend programs.
/// Routes, masquerade, which frontends filter by source range and the
/// hairpin set are the table's; this only numbers the distinct endpoint lists.
pub fn decide(p: &ServicePortPlan, masq: &MasqueradeConfig) -> PortDecision {
    let table = p.flow_table(masq);
    let mut routes: Vec<Vec<Endpoint>> = Vec::new();
    let mut action = |id: RouteId| -> Action {
        match table.route(id) {
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
    for f in &table.frontends {
        let per_class = CLASSES.map(|class| {
            let flow = f.class(class);
            (action(flow.route), flow.masquerade)
        });
        // The render never filters the node's own traffic, which the table
        // never marks either.
        let filtered = f.classes().iter().any(|(_, c)| c.source_ranges);
        let source_ranges = filtered.then(|| table.source_ranges.clone());
        frontends.push(FrontendDecision { frontend: f.frontend, per_class, source_ranges });
    }
    let mut hairpin: Vec<IpAddr> = table.hairpin.iter().map(|a| a.ip()).collect();
    hairpin.sort();
    hairpin.dedup();
    PortDecision { routes, frontends, affinity_timeout_seconds: p.affinity_timeout_seconds, hairpin }
}
