//! The flow table: the core's decisions for one Service port and family,
//! precomputed in the shape a dataplane programs.
//!
//! For every frontend the port serves and every class of source (pod, node,
//! external) the table says which route applies (by name: [`RouteId`]),
//! whether to masquerade, and whether loadBalancerSourceRanges filter that
//! traffic; it defines the routes it names, and the hairpin set. Backends
//! render it verbatim: none of them decides a traffic policy, a masquerade,
//! which route a set is, which Service serves a contested frontend or which
//! endpoints can hairpin. The out-of-process plugin protocol carries the
//! same table.
//!
//! The table is built in one place, [`ServicePortPlan::flow_table`], from
//! [`ServicePortPlan::flow_for_class`], which stays the normative answer
//! [`ServicePortPlan::flow`] gives per packet.

use std::fmt;
use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::plan::{Frontend, MasqueradeConfig, Route, ServicePortPlan, SourceClass};

/// The name of a route of a port: which endpoint set it is. kube-proxy calls
/// the chains of these the cluster-policy and local-policy chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteId {
    /// Every usable endpoint of the cluster.
    Cluster,
    /// This node's usable endpoints (a Local traffic policy).
    Local,
}

impl RouteId {
    pub const ALL: [RouteId; 2] = [RouteId::Cluster, RouteId::Local];

    /// `cluster`, `local`: for names a backend derives (chains, map keys).
    pub fn as_str(self) -> &'static str {
        match self {
            RouteId::Cluster => "cluster",
            RouteId::Local => "local",
        }
    }
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one class of source gets at one frontend: one cell of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClassFlow {
    /// The route, by name ([`FlowTable::route`]).
    pub route: RouteId,
    /// SNAT to the node.
    pub masquerade: bool,
    /// Sources outside the table's [`source_ranges`](FlowTable::source_ranges)
    /// are dropped; the others get `route`.
    pub source_ranges: bool,
}

/// One frontend and what each class of source gets there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FrontendFlows {
    pub frontend: Frontend,
    pub pod: ClassFlow,
    pub node: ClassFlow,
    pub external: ClassFlow,
}

impl FrontendFlows {
    /// The cell of one class of source.
    pub fn class(&self, class: SourceClass) -> &ClassFlow {
        match class {
            SourceClass::Pod => &self.pod,
            SourceClass::Node => &self.node,
            SourceClass::External => &self.external,
        }
    }

    /// Every (class, cell), pods first.
    pub fn classes(&self) -> [(SourceClass, &ClassFlow); 3] {
        [(SourceClass::Pod, &self.pod), (SourceClass::Node, &self.node), (SourceClass::External, &self.external)]
    }

    /// The classes whose traffic is masqueraded.
    pub fn masquerade_set(&self) -> MasqueradeSet {
        MasqueradeSet { pod: self.pod.masquerade, node: self.node.masquerade, external: self.external.masquerade }
    }

    /// Whether every class uses the same route.
    pub fn single_route(&self) -> Option<RouteId> {
        (self.pod.route == self.node.route && self.node.route == self.external.route).then_some(self.pod.route)
    }
}

/// Which classes of source a frontend masquerades.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MasqueradeSet {
    pub pod: bool,
    pub node: bool,
    pub external: bool,
}

impl MasqueradeSet {
    pub fn all(self) -> bool {
        self.pod && self.node && self.external
    }

    pub fn none(self) -> bool {
        !(self.pod || self.node || self.external)
    }
}

/// The core's decisions for one Service port and family, as a dataplane programs them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTable {
    /// The routes the cells name, each once, [`RouteId::Cluster`] first.
    pub routes: Vec<(RouteId, Route)>,
    /// Every frontend the port serves (contested ones another port serves are left out).
    pub frontends: Vec<FrontendFlows>,
    /// loadBalancerSourceRanges, for cells with `source_ranges`.
    pub source_ranges: Vec<IpNet>,
    /// Endpoints masqueraded when they reach themselves through this port
    /// ([`ServicePortPlan::hairpin`]); sorted.
    pub hairpin: Vec<SocketAddr>,
}

/// A route a table does not define (never named by a cell of that table).
static UNDEFINED: Route = Route::Reject;

impl FlowTable {
    /// The route a cell names.
    pub fn route(&self, id: RouteId) -> &Route {
        self.routes.iter().find(|(r, _)| *r == id).map_or(&UNDEFINED, |(_, route)| route)
    }

    /// Whether `addr` is in the hairpin set.
    pub fn is_hairpin(&self, addr: &SocketAddr) -> bool {
        self.hairpin.binary_search(addr).is_ok()
    }

    /// Every endpoint any route reaches.
    pub fn endpoints(&self) -> impl Iterator<Item = &crate::Endpoint> {
        self.routes.iter().flat_map(|(_, r)| r.endpoints())
    }
}

impl ServicePortPlan {
    /// The flow table of this port: each served frontend × class of source
    /// from [`flow_for_class`](Self::flow_for_class), the routes the cells
    /// name, the source ranges and the hairpin set.
    pub fn flow_table(&self, masq: &MasqueradeConfig) -> FlowTable {
        let frontends: Vec<FrontendFlows> = self
            .frontends()
            .map(|frontend| FrontendFlows {
                frontend,
                pod: self.flow_for_class(frontend.kind, SourceClass::Pod, masq),
                node: self.flow_for_class(frontend.kind, SourceClass::Node, masq),
                external: self.flow_for_class(frontend.kind, SourceClass::External, masq),
            })
            .collect();
        let routes = RouteId::ALL
            .into_iter()
            .filter(|id| frontends.iter().any(|f| f.classes().iter().any(|(_, c)| c.route == *id)))
            .map(|id| (id, self.route(id).clone()))
            .collect();
        FlowTable { routes, frontends, source_ranges: self.source_ranges.clone(), hairpin: self.hairpin(masq) }
    }
}
