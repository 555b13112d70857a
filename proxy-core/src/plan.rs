//! Plans: the Service semantics decided once, for every backend.
//!
//! A [`ServicePlan`] holds one [`ServicePortPlan`] per Service port and IP
//! family. Each says which frontends exist (ClusterIP, NodePort, externalIPs,
//! load-balancer IPs) and which endpoints each class of traffic reaches. Backends
//! render these; they never look at traffic policies, topology or endpoint
//! conditions themselves.
//!
//! [`ServicePortPlan::flow`] is the normative answer to "what happens to this
//! packet": backends' packet tracers and the conformance suite compare against it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::flows::{ClassFlow, RouteId};
use crate::model::{Endpoint, IpFamily, Protocol, ServiceInfo, ServiceName, ServicePortName};

/// What happens to traffic for one frontend and class of source.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Route {
    /// Spread over these endpoints (never empty).
    Forward(Arc<[Endpoint]>),
    /// The Service has no usable endpoint anywhere: refuse at once (ICMP
    /// port-unreachable / TCP RST) so that clients do not wait for a timeout.
    Reject,
    /// The Service has endpoints, but none this traffic may use (a Local
    /// traffic policy with no endpoint on this node): drop silently.
    Drop,
}

impl Route {
    pub fn endpoints(&self) -> &[Endpoint] {
        match self {
            Route::Forward(eps) => eps,
            Route::Reject | Route::Drop => &[],
        }
    }

    /// The verdict when there is no endpoint, `None` when forwarding.
    pub fn empty_verdict(&self) -> Option<EmptyVerdict> {
        match self {
            Route::Forward(_) => None,
            Route::Reject => Some(EmptyVerdict::Reject),
            Route::Drop => Some(EmptyVerdict::Drop),
        }
    }

    pub(crate) fn from_set(endpoints: Vec<Endpoint>, service_has_endpoints: bool) -> Route {
        if !endpoints.is_empty() {
            Route::Forward(endpoints.into())
        } else if service_has_endpoints {
            Route::Drop
        } else {
            Route::Reject
        }
    }
}

/// What a frontend does when its endpoint set is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EmptyVerdict {
    Reject,
    Drop,
}

/// The kinds of frontend a Service port can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FrontendKind {
    ClusterIP,
    ExternalIP,
    LoadBalancer,
    /// The node port on every node address `--nodeport-addresses` selects.
    NodePort,
}

impl FrontendKind {
    /// External frontends obey externalTrafficPolicy; ClusterIP obeys internalTrafficPolicy.
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIP)
    }
}

/// A place a client sends traffic to: (kind, address, port, protocol) in one
/// IP family. The address is `None` for node ports, which answer on every
/// selected node address of their family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frontend {
    pub kind: FrontendKind,
    pub ip: Option<IpAddr>,
    /// Explicit because a node port has no address of its own, and a
    /// dual-stack Service has one node port per family.
    pub family: IpFamily,
    pub port: u16,
    pub protocol: Protocol,
}

impl Frontend {
    /// A frontend on an address (ClusterIP, external IP, load-balancer IP).
    pub fn at(kind: FrontendKind, ip: IpAddr, port: u16, protocol: Protocol) -> Frontend {
        Frontend { kind, ip: Some(ip), family: IpFamily::of(&ip), port, protocol }
    }

    /// A node port of one family.
    pub fn node_port(family: IpFamily, port: u16, protocol: Protocol) -> Frontend {
        Frontend { kind: FrontendKind::NodePort, ip: None, family, port, protocol }
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.protocol.as_lower_str();
        match (self.kind, self.ip) {
            (FrontendKind::NodePort, _) => match self.family {
                IpFamily::V4 => write!(f, "nodeport:{}/{proto}", self.port),
                IpFamily::V6 => write!(f, "nodeport6:{}/{proto}", self.port),
            },
            (_, Some(ip)) => write!(f, "{}/{proto}", SocketAddr::new(ip, self.port)),
            (kind, None) => write!(f, "{kind:?}:{}/{proto}", self.port),
        }
    }
}

/// Where a packet comes from, as the proxy can tell it apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourceClass {
    /// A pod (a source in the cluster CIDR), on this node or another.
    Pod,
    /// A process on this node itself (host network), source is a local address.
    Node,
    /// Anything else: off-cluster clients, other nodes' host network.
    External,
}

impl SourceClass {
    pub const ALL: [SourceClass; 3] = [SourceClass::Pod, SourceClass::Node, SourceClass::External];
}

/// How the proxy decides masquerading; part of every snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MasqueradeConfig {
    /// `--masquerade-all`: SNAT everything sent to a ClusterIP.
    pub all: bool,
    /// `--cluster-cidr`: traffic from these sources is pod traffic ("local
    /// traffic detection"); ClusterIP traffic from anywhere else is
    /// masqueraded. Empty means detection is off.
    pub cluster_cidrs: Vec<IpNet>,
}

impl MasqueradeConfig {
    pub fn detects_local(&self) -> bool {
        !self.cluster_cidrs.is_empty()
    }

    /// Whether this source counts as pod traffic.
    pub fn is_pod_source(&self, ip: IpAddr) -> bool {
        self.cluster_cidrs.iter().any(|c| c.contains(&ip))
    }
}

/// The planner's answer for one (Service port, IP family).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServicePortPlan {
    pub name: ServicePortName,
    pub family: IpFamily,
    pub protocol: Protocol,
    /// The Service port (`spec.ports[].port`).
    pub port: u16,
    /// The ClusterIP of this family, if the Service has one.
    pub cluster_ip: Option<IpAddr>,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs with ipMode VIP (Proxy-mode ones are not captured).
    pub load_balancer_ips: Vec<IpAddr>,
    /// loadBalancerSourceRanges of this family; empty means every source is allowed.
    pub source_ranges: Vec<IpNet>,
    /// sessionAffinity ClientIP timeout.
    pub affinity_timeout_seconds: Option<u32>,
    pub health_check_node_port: Option<u16>,
    /// The route named [`RouteId::Cluster`]: every usable endpoint of the
    /// cluster (ready ones after topology, else serving-terminating ones).
    pub cluster: Route,
    /// The route named [`RouteId::Local`]: this node's usable endpoints.
    /// Present only when a traffic policy is Local (nothing else uses it).
    pub local: Option<Route>,
    /// internalTrafficPolicy Local: ClusterIP traffic uses [`RouteId::Local`].
    pub internal_policy_local: bool,
    /// externalTrafficPolicy Local: outside traffic to external frontends uses
    /// [`RouteId::Local`] and keeps its source.
    pub external_policy_local: bool,
    /// The number of ready endpoints on this node, for healthCheckNodePort.
    pub local_ready_endpoints: usize,
    /// Whether the Service has any usable endpoint at all, anywhere.
    pub has_endpoints: bool,
    /// Frontends of this port that another Service port claimed first (the
    /// same address, port and protocol): not served by this port. Decided
    /// across Services by [`crate::contest`]; usually empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contested: Vec<Frontend>,
}

/// What [`ServicePortPlan::flow`] decides for a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub route: Route,
    /// SNAT to the node. Hairpin traffic (an endpoint reaching itself) is
    /// masqueraded as well: see [`Flow::masquerades_to`].
    pub masquerade: bool,
    /// The port's hairpin set ([`ServicePortPlan::hairpin`]).
    pub hairpin: Vec<SocketAddr>,
}

impl Flow {
    /// Whether traffic from `source` to `endpoint` is masqueraded: the flow's
    /// decision, or hairpin (the endpoint is the source itself and in the
    /// port's hairpin set).
    pub fn masquerades_to(&self, source: IpAddr, endpoint: &Endpoint) -> bool {
        self.masquerade || (endpoint.ip() == source && self.hairpin.binary_search(&endpoint.addr()).is_ok())
    }
}

/// A route that never forwards, for [`ServicePortPlan::route`] of a route
/// the plan does not have.
static NO_ROUTE: Route = Route::Reject;

impl ServicePortPlan {
    /// Every frontend of this port that it serves: the ones it claims, less
    /// the [`contested`](Self::contested) ones another Service port serves.
    pub fn frontends(&self) -> impl Iterator<Item = Frontend> + '_ {
        self.claimed_frontends().filter(|f| !self.contested.contains(f))
    }

    /// Every frontend the Service's spec gives this port, served or not.
    pub fn claimed_frontends(&self) -> impl Iterator<Item = Frontend> + '_ {
        let at = move |kind, ip: IpAddr| Frontend::at(kind, ip, self.port, self.protocol);
        let cluster = self.cluster_ip.map(|ip| at(FrontendKind::ClusterIP, ip));
        let external = self.external_ips.iter().map(move |ip| at(FrontendKind::ExternalIP, *ip));
        let lbs = self.load_balancer_ips.iter().map(move |ip| at(FrontendKind::LoadBalancer, *ip));
        let node_port = self.node_port.map(|p| Frontend::node_port(self.family, p, self.protocol));
        cluster.into_iter().chain(external).chain(lbs).chain(node_port)
    }

    /// The route a [`RouteId`] names.
    pub fn route(&self, id: RouteId) -> &Route {
        match id {
            RouteId::Cluster => &self.cluster,
            RouteId::Local => self.local.as_ref().unwrap_or(&NO_ROUTE),
        }
    }

    /// Every route the plan has, by name, the cluster route first.
    pub fn routes(&self) -> impl Iterator<Item = (RouteId, &Route)> {
        std::iter::once((RouteId::Cluster, &self.cluster)).chain(self.local.as_ref().map(|r| (RouteId::Local, r)))
    }

    /// Which route a frontend kind uses for a class of source: the traffic
    /// policies, decided here and nowhere else. ClusterIP traffic follows
    /// internalTrafficPolicy; external frontends follow
    /// externalTrafficPolicy for outside traffic, while pods and the node
    /// reach every endpoint of the cluster even with policy Local
    /// (kube-proxy treats them as going out to the load balancer and back).
    pub fn route_id_for(&self, kind: FrontendKind, class: SourceClass) -> RouteId {
        let local = match kind {
            FrontendKind::ClusterIP => self.internal_policy_local,
            _ => self.external_policy_local && class == SourceClass::External,
        };
        if local { RouteId::Local } else { RouteId::Cluster }
    }

    /// The route a frontend kind uses for a class of source, before source ranges.
    pub fn route_for(&self, kind: FrontendKind, class: SourceClass) -> &Route {
        self.route(self.route_id_for(kind, class))
    }

    /// ClusterIP traffic, after internalTrafficPolicy.
    pub fn internal(&self) -> &Route {
        self.route_for(FrontendKind::ClusterIP, SourceClass::Pod)
    }

    /// External frontends, traffic from outside the cluster, after externalTrafficPolicy.
    pub fn external(&self) -> &Route {
        self.route_for(FrontendKind::NodePort, SourceClass::External)
    }

    /// External frontends, traffic from pods and from the node itself: every
    /// endpoint of the cluster whatever the policy.
    pub fn external_from_cluster(&self) -> &Route {
        self.route_for(FrontendKind::NodePort, SourceClass::Pod)
    }

    /// Whether loadBalancerSourceRanges filter a class of source at a
    /// frontend kind: only LB frontends are filtered, and the node itself
    /// is always allowed.
    pub fn source_ranges_apply(&self, kind: FrontendKind, class: SourceClass) -> bool {
        kind == FrontendKind::LoadBalancer && !self.source_ranges.is_empty() && class != SourceClass::Node
    }

    /// Whether `source` passes loadBalancerSourceRanges for `kind`.
    pub fn source_allowed(&self, kind: FrontendKind, source: IpAddr, class: SourceClass) -> bool {
        !self.source_ranges_apply(kind, class) || self.source_ranges.iter().any(|r| r.contains(&source))
    }

    /// The normative decision for a new connection from `source` (of `class`)
    /// to a frontend of `kind` of this port.
    pub fn flow(&self, kind: FrontendKind, source: IpAddr, class: SourceClass, masq: &MasqueradeConfig) -> Flow {
        let cell = self.flow_for_class(kind, class, masq);
        if cell.source_ranges && !self.source_ranges.iter().any(|r| r.contains(&source)) {
            return Flow { route: Route::Drop, masquerade: false, hairpin: Vec::new() };
        }
        Flow { route: self.route(cell.route).clone(), masquerade: cell.masquerade, hairpin: self.hairpin(masq) }
    }

    /// [`flow`](Self::flow) for every source of `class`: what a dataplane
    /// programs per (frontend, class of source), and the one place the
    /// [`FlowTable`](crate::FlowTable) is built from. The route is named,
    /// so no backend has to find out which set it is.
    pub fn flow_for_class(&self, kind: FrontendKind, class: SourceClass, masq: &MasqueradeConfig) -> ClassFlow {
        let masquerade = match kind {
            // Off-cluster traffic to a ClusterIP is masqueraded so that replies
            // come back through this node (kube-proxy's "masquerade if not local").
            FrontendKind::ClusterIP => masq.all || (masq.detects_local() && class != SourceClass::Pod),
            // Cluster policy may cross nodes: always masquerade.
            _ if !self.external_policy_local => true,
            // Local policy keeps the source, but the node's own traffic has a
            // local source address that must be rewritten.
            _ => class == SourceClass::Node,
        };
        ClassFlow {
            route: self.route_id_for(kind, class),
            masquerade,
            source_ranges: self.source_ranges_apply(kind, class),
        }
    }

    /// The hairpin set: endpoints whose traffic to themselves through this
    /// port is masqueraded (else the endpoint would answer itself directly
    /// and the client would never see the reply). Decided here once:
    ///
    /// - every endpoint on this node, and every endpoint whose node is
    ///   unknown (it may be on this node);
    /// - through an external frontend whose pod traffic keeps its source
    ///   (externalTrafficPolicy Local), every endpoint of that route: pods
    ///   on other nodes send node-port and external-IP traffic to this node,
    ///   and may be DNATed back to themselves.
    ///
    /// Remote endpoints reaching a ClusterIP are left out: every node
    /// proxies its own pods' ClusterIP traffic, so it never comes here.
    /// kube-proxy's iptables mode marks every endpoint (one rule each), its
    /// nftables and ipvs modes only local ones (and so miss the second case).
    /// Sorted, without duplicates.
    pub fn hairpin(&self, masq: &MasqueradeConfig) -> Vec<SocketAddr> {
        let mut set = BTreeSet::new();
        let mut routes: Vec<RouteId> = Vec::with_capacity(2);
        for f in self.frontends() {
            for class in SourceClass::ALL {
                let id = self.route_id_for(f.kind, class);
                if !routes.contains(&id) {
                    routes.push(id);
                }
            }
            let pod = self.flow_for_class(f.kind, SourceClass::Pod, masq);
            if f.kind.is_external() && !pod.masquerade {
                set.extend(self.route(pod.route).endpoints().iter().map(Endpoint::addr));
            }
        }
        for id in routes {
            let eps = self.route(id).endpoints().iter();
            set.extend(eps.filter(|e| e.is_local || e.info.node_name.is_none()).map(Endpoint::addr));
        }
        set.into_iter().collect()
    }
}

/// The plan of one Service: its info and one entry per (port, family).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServicePlan {
    pub service: Arc<ServiceInfo>,
    pub ports: Vec<ServicePortPlan>,
}

impl ServicePlan {
    pub fn name(&self) -> &ServiceName {
        &self.service.name
    }

    /// Whether a Service's plan is the same before and after a batch (both
    /// absent counts as the same): the same `Arc` (the tracker shares
    /// unchanged plans) or an equal value. Backends skip such Services in a
    /// partial sync.
    pub fn unchanged(old: Option<&Arc<ServicePlan>>, new: Option<&Arc<ServicePlan>>) -> bool {
        match (old, new) {
            (Some(o), Some(n)) => Arc::ptr_eq(o, n) || o == n,
            (None, None) => true,
            _ => false,
        }
    }
}

/// What a backend reports a frontend does, read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProgrammedFrontend {
    /// The Service port, when the backend can tell (rule comments, map values).
    pub service: Option<String>,
    /// Endpoints reached by ordinary traffic (ClusterIP: all sources;
    /// external frontends: sources outside the cluster).
    pub endpoints: BTreeSet<SocketAddr>,
    /// For external frontends with externalTrafficPolicy Local, the endpoints
    /// pods and the node reach, when that set differs from `endpoints`.
    pub cluster_endpoints: Option<BTreeSet<SocketAddr>>,
    /// The verdict when `endpoints` is empty.
    pub empty_verdict: Option<EmptyVerdict>,
    pub affinity_timeout_seconds: Option<u32>,
}

/// Backend-neutral view of what is programmed in the kernel: every frontend
/// and what it reaches. Produced by `Dataplane::inspect()` from the kernel,
/// and by [`crate::Snapshot::expected_state`] from the plans, so the two can
/// be compared.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProgrammedState {
    #[serde(with = "frontend_map")]
    pub frontends: BTreeMap<Frontend, ProgrammedFrontend>,
    /// Attachment points where the backend's datapath should be hooked and
    /// the kernel shows it is not (`tc ingress on eth0`, `cgroup connect4
    /// on /sys/fs/cgroup`): the frontends above are not reachable through
    /// them, whatever the maps or rules say. Always empty for backends
    /// whose rules are part of the stack itself (iptables, IPVS), and in
    /// the desired state, so any entry is a difference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unattached: Vec<String>,
}

/// One difference between two [`ProgrammedState`]s. `Unattached`: the
/// datapath is not hooked where it should be (see [`ProgrammedState::unattached`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateDifference {
    Missing { frontend: Frontend, expected: ProgrammedFrontend },
    Unexpected { frontend: Frontend, found: ProgrammedFrontend },
    Differs { frontend: Frontend, expected: ProgrammedFrontend, found: ProgrammedFrontend },
    Unattached { hook: String },
}

impl fmt::Display for StateDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateDifference::Missing { frontend, .. } => write!(f, "{frontend}: missing from the kernel"),
            StateDifference::Unexpected { frontend, found } => {
                write!(f, "{frontend}: in the kernel but not desired (reaches {:?})", found.endpoints)
            }
            StateDifference::Differs { frontend, expected, found } => write!(
                f,
                "{frontend}: expected endpoints {:?} (cluster {:?}, empty {:?}, affinity {:?}), found {:?} (cluster {:?}, empty {:?}, affinity {:?})",
                expected.endpoints,
                expected.cluster_endpoints,
                expected.empty_verdict,
                expected.affinity_timeout_seconds,
                found.endpoints,
                found.cluster_endpoints,
                found.empty_verdict,
                found.affinity_timeout_seconds
            ),
            StateDifference::Unattached { hook } => {
                write!(f, "{hook}: the datapath is not attached there (nothing is translated through it)")
            }
        }
    }
}

impl ProgrammedState {
    /// Differences from `self` (expected) to `found`, ignoring the `service`
    /// label (not every backend can read it back).
    pub fn diff(&self, found: &ProgrammedState) -> Vec<StateDifference> {
        let strip = |p: &ProgrammedFrontend| ProgrammedFrontend { service: None, ..p.clone() };
        let mut out = Vec::new();
        for (frontend, expected) in &self.frontends {
            match found.frontends.get(frontend) {
                None => out.push(StateDifference::Missing { frontend: *frontend, expected: expected.clone() }),
                Some(got) if strip(got) != strip(expected) => out.push(StateDifference::Differs {
                    frontend: *frontend,
                    expected: expected.clone(),
                    found: got.clone(),
                }),
                Some(_) => {}
            }
        }
        for (frontend, got) in &found.frontends {
            if !self.frontends.contains_key(frontend) {
                out.push(StateDifference::Unexpected { frontend: *frontend, found: got.clone() });
            }
        }
        for hook in found.unattached.iter().filter(|h| !self.unattached.contains(h)) {
            out.push(StateDifference::Unattached { hook: hook.clone() });
        }
        out
    }
}

/// JSON object keys must be strings; frontends serialize as a list of pairs.
mod frontend_map {
    use super::{Frontend, ProgrammedFrontend};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize)]
    struct Entry {
        frontend: Frontend,
        #[serde(flatten)]
        programmed: ProgrammedFrontend,
    }

    pub fn serialize<S: Serializer>(map: &BTreeMap<Frontend, ProgrammedFrontend>, s: S) -> Result<S::Ok, S::Error> {
        let entries: Vec<Entry> = map.iter().map(|(f, p)| Entry { frontend: *f, programmed: p.clone() }).collect();
        entries.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Frontend, ProgrammedFrontend>, D::Error> {
        let entries = Vec::<Entry>::deserialize(d)?;
        Ok(entries.into_iter().map(|e| (e.frontend, e.programmed)).collect())
    }
}
