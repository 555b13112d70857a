//! Snapshots: the immutable desired state handed to a backend for one sync.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::contest::Claims;
use crate::flows::FlowTable;
use crate::model::{NodeInfo, ServiceName};
use crate::plan::{
    FrontendKind, MasqueradeConfig, ProgrammedFrontend, ProgrammedState, Route, ServicePlan, ServicePortPlan,
    SourceClass,
};
use crate::planner::PlannerConfig;

/// Whether any port of `plan` has a healthCheckNodePort.
pub(crate) fn has_health_check(plan: &ServicePlan) -> bool {
    plan.ports.iter().any(|p| p.health_check_node_port.is_some())
}

/// The desired state at one moment: every Service's plan, the node, and the
/// planner's configuration. Cloning is O(1) (a persistent map inside), so a
/// snapshot per sync costs nothing at 50k Services.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Increases with every change the tracker accepted.
    pub generation: u64,
    pub node: Option<Arc<NodeInfo>>,
    pub config: Arc<PlannerConfig>,
    pub(crate) plans: imbl::OrdMap<ServiceName, Arc<ServicePlan>>,
    /// The Services whose plan has a healthCheckNodePort, kept by the
    /// tracker as plans change, so that the health-check servers follow a
    /// sync without walking every plan.
    pub(crate) health_checked: imbl::OrdSet<ServiceName>,
}

impl Snapshot {
    /// A snapshot made directly from plans (tests, benchmarks, plugins replaying state).
    pub fn from_plans(
        config: PlannerConfig,
        node: Option<NodeInfo>,
        plans: impl IntoIterator<Item = ServicePlan>,
    ) -> Snapshot {
        // Contested frontends are decided across every plan, as the tracker does.
        let mut plans: Vec<ServicePlan> = plans.into_iter().collect();
        let claims = Claims::of(plans.iter());
        for plan in &mut plans {
            claims.apply(plan);
        }
        Snapshot {
            generation: 0,
            node: node.map(Arc::new),
            config: Arc::new(config),
            plans: plans.into_iter().map(|p| (p.name().clone(), Arc::new(p))).collect(),
            health_checked: imbl::OrdSet::new(),
        }
        .with_health_check_index()
    }

    fn with_health_check_index(mut self) -> Snapshot {
        self.health_checked =
            self.plans.iter().filter(|(_, p)| has_health_check(p)).map(|(name, _)| name.clone()).collect();
        self
    }

    /// The port plans that have a healthCheckNodePort (externalTrafficPolicy
    /// Local on a load balancer), without walking every Service.
    pub fn health_check_port_plans(&self) -> impl Iterator<Item = &ServicePortPlan> {
        self.health_checked
            .iter()
            .filter_map(|name| self.plans.get(name))
            .flat_map(|p| p.ports.iter().filter(|pp| pp.health_check_node_port.is_some()))
    }

    /// Every Service plan, ordered by name.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServicePlan>> {
        self.plans.values()
    }

    pub fn service(&self, name: &ServiceName) -> Option<&Arc<ServicePlan>> {
        self.plans.get(name)
    }

    pub fn len(&self) -> usize {
        self.plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// Every port plan of every Service.
    pub fn port_plans(&self) -> impl Iterator<Item = &ServicePortPlan> {
        self.plans.values().flat_map(|p| p.ports.iter())
    }

    pub fn masquerade(&self) -> &MasqueradeConfig {
        &self.config.masquerade
    }

    /// Classifies a source address the way the dataplanes do: one of the
    /// node's own addresses is the node, a cluster-CIDR address is a pod,
    /// anything else is external.
    pub fn classify_source(&self, source: IpAddr, node_addresses: &[IpAddr]) -> SourceClass {
        if node_addresses.contains(&source) || source.is_loopback() {
            SourceClass::Node
        } else if self.config.masquerade.is_pod_source(source) {
            SourceClass::Pod
        } else {
            SourceClass::External
        }
    }

    /// What a correct backend's `inspect()` reports for this snapshot: every
    /// frontend of every flow table, the endpoints outside traffic reaches
    /// and, where pods and the node reach others, those.
    pub fn expected_state(&self) -> ProgrammedState {
        let mut frontends = BTreeMap::new();
        for plan in self.port_plans() {
            let table = plan.flow_table(self.masquerade());
            for f in &table.frontends {
                let route = table.route(f.external.route);
                let cluster = table.route(f.pod.route);
                let set = |r: &Route| r.endpoints().iter().map(|e| e.addr()).collect();
                let cluster_endpoints =
                    (f.frontend.kind != FrontendKind::ClusterIP && cluster != route).then(|| set(cluster));
                frontends.insert(
                    f.frontend,
                    ProgrammedFrontend {
                        service: Some(plan.name.to_string()),
                        endpoints: set(route),
                        cluster_endpoints,
                        empty_verdict: route.empty_verdict(),
                        affinity_timeout_seconds: plan.affinity_timeout_seconds,
                    },
                );
            }
        }
        ProgrammedState { frontends, unattached: Vec::new() }
    }

    /// The flow table of every port plan, in Service order.
    pub fn flow_tables(&self) -> impl Iterator<Item = (&ServicePortPlan, FlowTable)> {
        self.port_plans().map(|p| (p, p.flow_table(self.masquerade())))
    }
}
