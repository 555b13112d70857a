//! The planner: Kubernetes Service semantics, decided once for every backend.
//!
//! For each Service port and IP family it computes which endpoints ClusterIP
//! traffic and external traffic use after traffic policies, topology hints and
//! the terminating-endpoint fallback, and what happens when that set is empty.
//! The rules follow kube-proxy's `CategorizeEndpoints` (pkg/proxy/topology.go).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::model::{
    Endpoint, EndpointSliceInfo, FamilySet, IpFamily, NodeInfo, Protocol, ServiceInfo, TrafficDistribution,
};
use crate::plan::{MasqueradeConfig, Route, ServicePlan, ServicePortPlan};

/// What the planner needs to know about this proxy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlannerConfig {
    /// This node's name (`--hostname-override` or the host name): endpoints
    /// whose `nodeName` equals it are local.
    pub node_name: Arc<str>,
    /// The IP families this proxy programs.
    pub families: FamilySet,
    pub masquerade: MasqueradeConfig,
}

impl PlannerConfig {
    pub fn new(node_name: &str) -> Self {
        PlannerConfig { node_name: node_name.into(), families: FamilySet::V4, masquerade: MasqueradeConfig::default() }
    }
}

/// (port name, protocol, family): what endpoints are grouped by.
pub type PortKey = (Arc<str>, Protocol, IpFamily);

/// The endpoints of one Service, merged from all its slices: per (port name,
/// protocol, family), de-duplicated by address and port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceEndpoints {
    by_port: BTreeMap<PortKey, Vec<Endpoint>>,
}

impl ServiceEndpoints {
    /// Merges slices (any order; they are visited by name so the result is
    /// deterministic). An endpoint in several slices is kept once; if the
    /// copies disagree, a local copy wins, then a ready one, as kube-proxy
    /// favours `isLocal` when de-duplicating.
    pub fn merge<'a>(slices: impl IntoIterator<Item = &'a EndpointSliceInfo>, node_name: &str) -> ServiceEndpoints {
        let mut slices: Vec<&EndpointSliceInfo> = slices.into_iter().collect();
        slices.sort_by(|a, b| a.name.cmp(&b.name));
        let mut by_port: BTreeMap<PortKey, BTreeMap<(IpAddr, u16), Endpoint>> = BTreeMap::new();
        for slice in slices {
            for port in &slice.ports {
                let set = by_port.entry((port.name.clone(), port.protocol, slice.family)).or_default();
                for ep in &slice.endpoints {
                    if IpFamily::of(&ep.address) != slice.family {
                        continue;
                    }
                    let is_local = ep.node_name.as_deref() == Some(node_name);
                    let candidate = Endpoint { info: ep.clone(), port: port.port, is_local };
                    match set.get(&(ep.address, port.port)) {
                        Some(existing)
                            if (existing.is_local, existing.info.ready)
                                >= (candidate.is_local, candidate.info.ready) => {}
                        _ => {
                            set.insert((ep.address, port.port), candidate);
                        }
                    }
                }
            }
        }
        ServiceEndpoints { by_port: by_port.into_iter().map(|(k, v)| (k, v.into_values().collect())).collect() }
    }

    /// The endpoints for a Service port name, protocol and family (sorted by address and port).
    pub fn get(&self, port_name: &str, protocol: Protocol, family: IpFamily) -> &[Endpoint] {
        self.by_port.get(&(Arc::from(port_name), protocol, family)).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.by_port.values().all(Vec::is_empty)
    }

    /// Every (port name, protocol, family) with its endpoints.
    pub fn iter(&self) -> impl Iterator<Item = (&PortKey, &Vec<Endpoint>)> {
        self.by_port.iter()
    }
}

/// The endpoint sets of one Service port, as kube-proxy's `CategorizeEndpoints` computes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    /// For Cluster policies: ready endpoints (topology-filtered), else serving-terminating ones.
    pub cluster: Vec<Endpoint>,
    /// For Local policies: local ready endpoints, else local serving-terminating ones.
    pub local: Vec<Endpoint>,
    /// Whether any ready or serving-terminating endpoint exists anywhere.
    pub has_any: bool,
}

/// Which endpoint hints to honour; computed per Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologyMode {
    None,
    SameZone,
    SameNode,
}

/// Decides whether hints are used: only when every ready endpoint carries a
/// hint of that kind and at least one names this zone (or node). Node hints
/// are preferred only when the Service asks for PreferSameNode.
pub fn topology_mode(
    endpoints: &[Endpoint],
    distribution: Option<&TrafficDistribution>,
    node_name: &str,
    zone: Option<&str>,
) -> TopologyMode {
    let ready = || endpoints.iter().filter(|e| e.is_ready());
    if ready().next().is_none() {
        return TopologyMode::None;
    }
    if distribution == Some(&TrafficDistribution::PreferSameNode)
        && ready().all(|e| !e.info.node_hints().is_empty())
        && ready().any(|e| e.info.node_hints().iter().any(|h| &**h == node_name))
    {
        return TopologyMode::SameNode;
    }
    if let Some(zone) = zone
        && ready().all(|e| !e.info.zone_hints().is_empty())
        && ready().any(|e| e.info.zone_hints().iter().any(|h| &**h == zone))
    {
        return TopologyMode::SameZone;
    }
    TopologyMode::None
}

fn available_for_topology(ep: &Endpoint, mode: TopologyMode, node_name: &str, zone: Option<&str>) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => ep.info.node_hints().iter().any(|h| &**h == node_name),
        TopologyMode::SameZone => zone.is_some_and(|z| ep.info.zone_hints().iter().any(|h| &**h == z)),
    }
}

/// Splits a Service port's endpoints into the cluster-wide and local sets.
///
/// Ready endpoints are always preferred; serving-terminating ones are used
/// only when no ready one exists (in the cluster set, or locally for the local
/// set). The cluster set is always computed, because pods and the node reach
/// external frontends through it even with externalTrafficPolicy Local.
pub fn categorize(
    endpoints: &[Endpoint],
    distribution: Option<&TrafficDistribution>,
    node_name: &str,
    zone: Option<&str>,
) -> Categorized {
    let mode = topology_mode(endpoints, distribution, node_name, zone);
    let mut cluster: Vec<Endpoint> = endpoints
        .iter()
        .filter(|e| e.is_ready() && available_for_topology(e, mode, node_name, zone))
        .cloned()
        .collect();
    if cluster.is_empty() {
        cluster = endpoints.iter().filter(|e| e.is_serving_terminating()).cloned().collect();
    }
    let mut local: Vec<Endpoint> = endpoints.iter().filter(|e| e.is_local && e.is_ready()).cloned().collect();
    if local.is_empty() {
        local = endpoints.iter().filter(|e| e.is_local && e.is_serving_terminating()).cloned().collect();
    }
    let has_any = endpoints.iter().any(|e| e.is_ready() || e.is_serving_terminating());
    Categorized { cluster, local, has_any }
}

fn in_family(ip: &IpAddr, family: IpFamily) -> bool {
    IpFamily::of(ip) == family
}

fn net_in_family(net: &IpNet, family: IpFamily) -> bool {
    matches!((net, family), (IpNet::V4(_), IpFamily::V4) | (IpNet::V6(_), IpFamily::V6))
}

/// Plans one Service: one [`ServicePortPlan`] per port and served family in
/// which the Service has a ClusterIP.
pub fn plan_service(
    service: &Arc<ServiceInfo>,
    endpoints: &ServiceEndpoints,
    node: Option<&NodeInfo>,
    config: &PlannerConfig,
) -> ServicePlan {
    let zone = node.and_then(NodeInfo::zone);
    let node_name = &*config.node_name;
    // Plans live as long as their Service: size the Vec exactly (growing by
    // push leaves room for four ~250-byte port plans, 7.5 MB at 10,000 Services).
    let mut ports = Vec::with_capacity(service.ports.len() * config.families.iter().count());
    for family in config.families.iter() {
        let Some(cluster_ip) = service.cluster_ips.iter().copied().find(|ip| in_family(ip, family)) else {
            continue;
        };
        for port in &service.ports {
            let eps = endpoints.get(&port.name, port.protocol, family);
            let cat = categorize(eps, service.traffic_distribution.as_ref(), node_name, zone);
            let local_ready_endpoints = eps.iter().filter(|e| e.is_local && e.is_ready()).count();
            let cluster = Route::from_set(cat.cluster, cat.has_any);
            // The local set only exists for Local policies (nothing else names it).
            let local = (service.internal_policy_local() || service.external_policy_local())
                .then(|| Route::from_set(cat.local, cat.has_any));
            ports.push(ServicePortPlan {
                name: service.port_name(port),
                family,
                protocol: port.protocol,
                port: port.port,
                cluster_ip: Some(cluster_ip),
                node_port: port.node_port,
                external_ips: service.external_ips.iter().copied().filter(|ip| in_family(ip, family)).collect(),
                load_balancer_ips: service.load_balancer_vips().filter(|ip| in_family(ip, family)).collect(),
                source_ranges: service
                    .load_balancer_source_ranges
                    .iter()
                    .copied()
                    .filter(|n| net_in_family(n, family))
                    .collect(),
                affinity_timeout_seconds: service.session_affinity.timeout_seconds(),
                health_check_node_port: service.health_check_node_port.filter(|_| service.needs_health_check()),
                cluster,
                local,
                internal_policy_local: service.internal_policy_local(),
                external_policy_local: service.external_policy_local(),
                local_ready_endpoints,
                has_endpoints: cat.has_any,
                contested: Vec::new(),
            });
        }
    }
    ports.shrink_to_fit();
    ServicePlan { service: service.clone(), ports }
}
