//! Test builders for Kubernetes objects and a recording [`Dataplane`] double.
//!
//! Public so that backends, the conformance suite and plugin authors can
//! write the same tests we do.

pub mod scale;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeStatus, Service, ServicePort,
    ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as K8sEndpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::convert::LABEL_SERVICE_NAME;
use crate::dataplane::{Capabilities, Dataplane, DataplaneError, SyncOutcome, SyncRequest};
use crate::plan::ProgrammedState;
use crate::tracker::{ProxyEvent, ResourceEvent};

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: namespace.map(Into::into), ..Default::default() }
}

/// Builds a `Service`.
#[derive(Clone, Debug)]
pub struct ServiceBuilder {
    svc: Service,
}

impl ServiceBuilder {
    /// A ClusterIP Service with the given ClusterIP.
    pub fn new(namespace: &str, name: &str, cluster_ip: &str) -> Self {
        ServiceBuilder {
            svc: Service {
                metadata: meta(Some(namespace), name),
                spec: Some(ServiceSpec {
                    type_: Some("ClusterIP".into()),
                    cluster_ip: Some(cluster_ip.into()),
                    cluster_ips: Some(vec![cluster_ip.into()]),
                    ..Default::default()
                }),
                status: None,
            },
        }
    }

    fn spec(&mut self) -> &mut ServiceSpec {
        self.svc.spec.get_or_insert_with(Default::default)
    }

    pub fn type_(mut self, t: &str) -> Self {
        self.spec().type_ = Some(t.into());
        self
    }

    /// Sets every ClusterIP (dual-stack: primary first).
    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        let spec = self.spec();
        spec.cluster_ip = ips.first().map(|s| s.to_string());
        spec.cluster_ips = Some(ips.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Adds a port; `name` may be empty. Protocol is `TCP`, `UDP` or `SCTP`.
    pub fn port(self, name: &str, port: i32, protocol: &str) -> Self {
        self.port_full(name, port, protocol, None)
    }

    /// Adds a port with a node port (also makes the Service a NodePort if it was ClusterIP).
    pub fn node_port(mut self, name: &str, port: i32, protocol: &str, node_port: i32) -> Self {
        if self.spec().type_.as_deref() == Some("ClusterIP") {
            self.spec().type_ = Some("NodePort".into());
        }
        self.port_full(name, port, protocol, Some(node_port))
    }

    fn port_full(mut self, name: &str, port: i32, protocol: &str, node_port: Option<i32>) -> Self {
        self.spec().ports.get_or_insert_with(Vec::new).push(ServicePort {
            name: (!name.is_empty()).then(|| name.to_string()),
            port,
            protocol: Some(protocol.into()),
            node_port,
            ..Default::default()
        });
        self
    }

    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Adds a load-balancer ingress IP (makes the Service a LoadBalancer). `ip_mode`: `VIP` or `Proxy`.
    pub fn load_balancer_ip(mut self, ip: &str, ip_mode: Option<&str>) -> Self {
        self.spec().type_ = Some("LoadBalancer".into());
        let status = self.svc.status.get_or_insert_with(ServiceStatus::default);
        let lb = status.load_balancer.get_or_insert_with(LoadBalancerStatus::default);
        lb.ingress.get_or_insert_with(Vec::new).push(LoadBalancerIngress {
            ip: Some(ip.into()),
            ip_mode: ip_mode.map(Into::into),
            ..Default::default()
        });
        self
    }

    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges = Some(ranges.iter().map(|s| s.to_string()).collect());
        self
    }

    /// sessionAffinity ClientIP with a timeout (None: the API default).
    pub fn affinity(mut self, timeout_seconds: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = timeout_seconds
            .map(|t| SessionAffinityConfig { client_ip: Some(ClientIPConfig { timeout_seconds: Some(t) }) });
        self
    }

    pub fn external_traffic_policy(mut self, p: &str) -> Self {
        self.spec().external_traffic_policy = Some(p.into());
        self
    }

    pub fn internal_traffic_policy(mut self, p: &str) -> Self {
        self.spec().internal_traffic_policy = Some(p.into());
        self
    }

    pub fn health_check_node_port(mut self, port: i32) -> Self {
        self.spec().health_check_node_port = Some(port);
        self
    }

    pub fn traffic_distribution(mut self, d: &str) -> Self {
        self.spec().traffic_distribution = Some(d.into());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.svc.metadata.labels.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }

    /// `metadata.creationTimestamp`, in seconds since the epoch.
    pub fn created(mut self, seconds: i64) -> Self {
        self.svc.metadata.creation_timestamp =
            jiff::Timestamp::from_second(seconds).ok().map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
        self
    }

    pub fn build(self) -> Service {
        self.svc
    }
}

/// Builds one endpoint of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct EndpointBuilder {
    ep: K8sEndpoint,
}

/// A ready endpoint at `address`.
pub fn endpoint(address: &str) -> EndpointBuilder {
    EndpointBuilder {
        ep: K8sEndpoint {
            addresses: vec![address.into()],
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Default::default()
        },
    }
}

impl EndpointBuilder {
    fn conditions(&mut self) -> &mut EndpointConditions {
        self.ep.conditions.get_or_insert_with(Default::default)
    }

    pub fn node(mut self, node: &str) -> Self {
        self.ep.node_name = Some(node.into());
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.ep.zone = Some(zone.into());
        self
    }

    pub fn ready(mut self, ready: bool) -> Self {
        self.conditions().ready = Some(ready);
        self
    }

    pub fn serving(mut self, serving: bool) -> Self {
        self.conditions().serving = Some(serving);
        self
    }

    /// Terminating (and no longer ready), still serving unless told otherwise.
    pub fn terminating(mut self) -> Self {
        let c = self.conditions();
        c.terminating = Some(true);
        c.ready = Some(false);
        self
    }

    /// No conditions at all (the API's "unknown": ready and serving).
    pub fn no_conditions(mut self) -> Self {
        self.ep.conditions = None;
        self
    }

    pub fn zone_hints(mut self, zones: &[&str]) -> Self {
        let hints = self.ep.hints.get_or_insert_with(EndpointHints::default);
        hints.for_zones = Some(zones.iter().map(|z| ForZone { name: z.to_string() }).collect());
        self
    }

    pub fn node_hints(mut self, nodes: &[&str]) -> Self {
        let hints = self.ep.hints.get_or_insert_with(EndpointHints::default);
        hints.for_nodes = Some(nodes.iter().map(|n| ForNode { name: n.to_string() }).collect());
        self
    }
}

/// Builds an `EndpointSlice`.
#[derive(Clone, Debug)]
pub struct SliceBuilder {
    slice: EndpointSlice,
}

impl SliceBuilder {
    /// An IPv4 slice of `service` in `namespace`.
    pub fn new(namespace: &str, name: &str, service: &str) -> Self {
        let mut m = meta(Some(namespace), name);
        m.labels = Some(BTreeMap::from([(LABEL_SERVICE_NAME.to_string(), service.to_string())]));
        SliceBuilder {
            slice: EndpointSlice { address_type: "IPv4".into(), endpoints: Vec::new(), metadata: m, ports: None },
        }
    }

    pub fn address_type(mut self, t: &str) -> Self {
        self.slice.address_type = t.into();
        self
    }

    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.slice.ports.get_or_insert_with(Vec::new).push(EndpointPort {
            name: Some(name.into()),
            port: Some(port),
            protocol: Some(protocol.into()),
            app_protocol: None,
        });
        self
    }

    pub fn endpoint(mut self, ep: EndpointBuilder) -> Self {
        self.slice.endpoints.push(ep.ep);
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.slice.metadata.labels.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.slice.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }

    pub fn build(self) -> EndpointSlice {
        self.slice
    }
}

/// A Node with an InternalIP and optional zone.
pub fn node(name: &str, internal_ip: &str, zone: Option<&str>) -> Node {
    let mut m = meta(None, name);
    if let Some(z) = zone {
        m.labels = Some(BTreeMap::from([(crate::model::NodeInfo::ZONE_LABEL.to_string(), z.to_string())]));
    }
    Node {
        metadata: m,
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress { address: internal_ip.into(), type_: "InternalIP".into() }]),
            ..Default::default()
        }),
    }
}

/// The events of a complete initial list: every resource bracketed by Init/InitDone.
pub fn initial_list(services: Vec<Service>, slices: Vec<EndpointSlice>, node: Option<Node>) -> Vec<ProxyEvent> {
    let mut out = vec![ProxyEvent::Service(ResourceEvent::Init)];
    out.extend(services.into_iter().map(|s| ProxyEvent::Service(ResourceEvent::InitApply(s))));
    out.push(ProxyEvent::Service(ResourceEvent::InitDone));
    out.push(ProxyEvent::EndpointSlice(ResourceEvent::Init));
    out.extend(slices.into_iter().map(|s| ProxyEvent::EndpointSlice(ResourceEvent::InitApply(s))));
    out.push(ProxyEvent::EndpointSlice(ResourceEvent::InitDone));
    out.push(ProxyEvent::Node(ResourceEvent::Init));
    out.extend(node.map(|n| ProxyEvent::Node(ResourceEvent::InitApply(n))));
    out.push(ProxyEvent::Node(ResourceEvent::InitDone));
    out
}

/// A dataplane that records what it is asked to do and programs nothing.
/// `inspect` answers from the last successful request, so it is only a
/// stand-in for tests of the core, never for a backend.
#[derive(Debug, Default)]
pub struct RecordingDataplane {
    requests: Mutex<Vec<SyncRequest>>,
    fail_next: AtomicUsize,
    last_ok: Mutex<Option<SyncRequest>>,
    /// Reported as repaired drift by the next successful sync.
    repairs: Mutex<BTreeMap<String, u64>>,
}

impl RecordingDataplane {
    pub fn new() -> Self {
        RecordingDataplane::default()
    }

    /// Makes the next `n` syncs fail.
    pub fn fail_next(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Makes the next successful sync report `n` repaired objects of `kind`.
    pub fn repair_next(&self, kind: &str, n: u64) {
        *self.repairs.lock().unwrap_or_else(|e| e.into_inner()).entry(kind.to_string()).or_insert(0) += n;
    }

    /// Every request received, failed ones included.
    pub fn requests(&self) -> Vec<SyncRequest> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last request that succeeded.
    pub fn last_ok(&self) -> Option<SyncRequest> {
        self.last_ok.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The error a [`RecordingDataplane`] fails with.
#[derive(Debug, thiserror::Error)]
#[error("injected failure")]
pub struct InjectedFailure;

#[async_trait]
impl Dataplane for RecordingDataplane {
    fn mode(&self) -> &str {
        "recording"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn sync(&self, request: SyncRequest) -> Result<SyncOutcome, DataplaneError> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).push(request.clone());
        let failing = self.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if failing {
            return Err(DataplaneError::failed("recording", "sync", InjectedFailure));
        }
        let full = request.full;
        *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Some(request);
        let repairs = std::mem::take(&mut *self.repairs.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(SyncOutcome { full, repairs, ..Default::default() })
    }

    async fn inspect(&self) -> Result<ProgrammedState, DataplaneError> {
        Ok(self.last_ok().map(|r| r.snapshot.expected_state()).unwrap_or_default())
    }

    async fn cleanup(&self) -> Result<(), DataplaneError> {
        *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }
}

/// Panics when an error of `e`'s chain repeats its source's message (a
/// `"…: {source}"` message with the same source returned by `source()`):
/// [`crate::ErrorChain`] would print that cause twice. Each cause belongs
/// either in the message or in `source()`, never both.
pub fn assert_each_cause_once(e: &(dyn std::error::Error + 'static)) {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(source) = err.source() {
            let (message, inner) = (err.to_string(), source.to_string());
            assert!(
                inner.is_empty() || !message.contains(&inner),
                "{message:?} repeats its source {inner:?}; the chain prints: {}",
                crate::ErrorChain(e)
            );
        }
        current = err.source();
    }
}
