//! The model: what the proxy keeps of Services, EndpointSlices and its Node.
//!
//! These are plain immutable values, cheap to clone and share (`Arc` inside),
//! holding only the fields a service proxy uses. Labels, annotations and managed
//! fields are dropped at conversion so that a change the proxy does not care
//! about compares equal and is dropped by the change tracker, as kube-proxy does.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The IP family of an address, a Service IP or an EndpointSlice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IpFamily {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl IpFamily {
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// Kubernetes' spelling (`IPv4`, `IPv6`), also the `ip_family` tracing field.
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The set of IP families this node's proxy serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FamilySet {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl FamilySet {
    pub const V4: FamilySet = FamilySet { ipv4: true, ipv6: false };
    pub const V6: FamilySet = FamilySet { ipv4: false, ipv6: true };
    pub const DUAL: FamilySet = FamilySet { ipv4: true, ipv6: true };

    pub fn contains(&self, family: IpFamily) -> bool {
        match family {
            IpFamily::V4 => self.ipv4,
            IpFamily::V6 => self.ipv6,
        }
    }

    pub fn iter(self) -> impl Iterator<Item = IpFamily> {
        IpFamily::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

impl Default for FamilySet {
    fn default() -> Self {
        FamilySet::V4
    }
}

/// A transport protocol a Service port can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// Kubernetes' spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The lower-case name iptables and ipvsadm use (`tcp`, `udp`, `sctp`).
    pub fn as_lower_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number (`IPPROTO_*`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// Parses Kubernetes' spelling; an absent protocol defaults to TCP before this is called.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `namespace/name` of a Service.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceName {
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceName { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One port of one Service: `namespace/name:portname` plus the protocol, the
/// key kube-proxy uses for everything it programs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServicePortName {
    pub service: ServiceName,
    /// The port's `name`; empty for a Service's single unnamed port.
    pub port: Arc<str>,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() { write!(f, "{}", self.service) } else { write!(f, "{}:{}", self.service, self.port) }
    }
}

impl fmt::Debug for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}/{}", self.protocol)
    }
}

/// `spec.type`, without ExternalName (never proxied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// `spec.externalTrafficPolicy` / `spec.internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// `spec.sessionAffinity`, with ClientIP's timeout folded in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIP {
        /// `sessionAffinityConfig.clientIP.timeoutSeconds` (default 10800, at most 86400).
        timeout_seconds: u32,
    },
}

impl SessionAffinity {
    /// Kubernetes' default ClientIP timeout: three hours.
    pub const DEFAULT_TIMEOUT_SECONDS: u32 = 10800;
    /// The API's maximum ClientIP timeout: one day.
    pub const MAX_TIMEOUT_SECONDS: u32 = 86400;

    pub fn timeout_seconds(&self) -> Option<u32> {
        match self {
            SessionAffinity::None => None,
            SessionAffinity::ClientIP { timeout_seconds } => Some(*timeout_seconds),
        }
    }
}

/// `spec.trafficDistribution`. Kube-proxy does not read it directly (the
/// EndpointSlice controller turns it into hints), except that `PreferSameNode`
/// makes node hints preferred over zone hints.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrafficDistribution {
    PreferClose,
    PreferSameZone,
    PreferSameNode,
    /// A value this version does not know; kept so that it round-trips.
    Other(Arc<str>),
}

impl TrafficDistribution {
    pub fn parse(s: &str) -> TrafficDistribution {
        match s {
            "PreferClose" => TrafficDistribution::PreferClose,
            "PreferSameZone" => TrafficDistribution::PreferSameZone,
            "PreferSameNode" => TrafficDistribution::PreferSameNode,
            other => TrafficDistribution::Other(other.into()),
        }
    }
}

/// `status.loadBalancer.ingress[].ipMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpMode {
    /// Traffic arrives with the LB IP as destination: the proxy must handle it.
    #[default]
    VIP,
    /// The load balancer rewrites the destination to a node; the proxy must
    /// not capture the LB IP (so that in-cluster clients go through the LB).
    Proxy,
}

/// One load-balancer ingress point with an IP.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoadBalancerIngress {
    pub ip: IpAddr,
    pub ip_mode: IpMode,
}

/// One entry of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServicePortInfo {
    /// `name`; empty when the Service has a single unnamed port.
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: u16,
    /// `nodePort`, when the Service type allocates one.
    pub node_port: Option<u16>,
}

/// What the proxy keeps of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: ServiceName,
    pub service_type: ServiceType,
    /// `spec.clusterIPs` restricted to the families this node serves, primary first.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortInfo>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress` entries that carry an IP (LoadBalancer type only).
    pub load_balancer_ingress: Vec<LoadBalancerIngress>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub session_affinity: SessionAffinity,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub health_check_node_port: Option<u16>,
    pub traffic_distribution: Option<TrafficDistribution>,
    /// `metadata.creationTimestamp`, seconds since the epoch: the older of
    /// two Services claiming one frontend serves it ([`crate::contest`]).
    /// Unset for objects that carry none (manifests on disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
}

impl ServiceInfo {
    /// Reachable from outside the cluster: NodePort, LoadBalancer, or a
    /// ClusterIP Service with externalIPs (kube-proxy's `ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        matches!(self.service_type, ServiceType::NodePort | ServiceType::LoadBalancer) || !self.external_ips.is_empty()
    }

    /// externalTrafficPolicy Local, which only means something for externally accessible Services.
    pub fn external_policy_local(&self) -> bool {
        self.externally_accessible() && self.external_traffic_policy == TrafficPolicy::Local
    }

    pub fn internal_policy_local(&self) -> bool {
        self.internal_traffic_policy == TrafficPolicy::Local
    }

    /// A LoadBalancer Service with externalTrafficPolicy Local gets a health-check node port.
    pub fn needs_health_check(&self) -> bool {
        self.service_type == ServiceType::LoadBalancer && self.external_policy_local()
    }

    /// The load-balancer IPs this proxy captures: ipMode VIP only.
    pub fn load_balancer_vips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.load_balancer_ingress.iter().filter(|i| i.ip_mode == IpMode::VIP).map(|i| i.ip)
    }

    pub fn port_name(&self, port: &ServicePortInfo) -> ServicePortName {
        ServicePortName { service: self.name.clone(), port: port.name.clone(), protocol: port.protocol }
    }
}

/// `namespace/name` of an EndpointSlice.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SliceName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl SliceName {
    pub fn new(namespace: &str, name: &str) -> Self {
        SliceName { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for SliceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Debug for SliceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointPortInfo {
    /// Matches a Service port's `name` (empty for the unnamed port).
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint (its first address) of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub address: IpAddr,
    /// `conditions.ready`; absent means true.
    pub ready: bool,
    /// `conditions.serving`; absent means true.
    pub serving: bool,
    /// `conditions.terminating`; absent means false.
    pub terminating: bool,
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// `hints`, when the endpoint has any. Boxed: most endpoints have none,
    /// and two inline Vecs made every endpoint 40 bytes larger (the core
    /// holds one per endpoint of the cluster).
    pub hints: Option<Box<EndpointHints>>,
}

impl EndpointInfo {
    /// `hints.forZones[].name`, sorted.
    pub fn zone_hints(&self) -> &[Arc<str>] {
        self.hints.as_deref().map_or(&[], |h| &h.zones)
    }

    /// `hints.forNodes[].name`, sorted.
    pub fn node_hints(&self) -> &[Arc<str>] {
        self.hints.as_deref().map_or(&[], |h| &h.nodes)
    }
}

/// An endpoint's topology hints.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointHints {
    /// `forZones[].name`, sorted, without duplicates.
    pub zones: Box<[Arc<str>]>,
    /// `forNodes[].name`, sorted, without duplicates.
    pub nodes: Box<[Arc<str>]>,
}

/// What the proxy keeps of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointSliceInfo {
    pub name: SliceName,
    /// From the `kubernetes.io/service-name` label.
    pub service: ServiceName,
    pub family: IpFamily,
    pub ports: Vec<EndpointPortInfo>,
    pub endpoints: Vec<Arc<EndpointInfo>>,
}

/// An endpoint of one Service port, after merging the Service's slices: the
/// slice endpoint plus the port its slice gives for this Service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub info: Arc<EndpointInfo>,
    pub port: u16,
    /// On this proxy's node (`nodeName` equals our node name).
    pub is_local: bool,
}

impl Endpoint {
    pub fn ip(&self) -> IpAddr {
        self.info.address
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.info.address, self.port)
    }

    pub fn is_ready(&self) -> bool {
        self.info.ready
    }

    /// Serving and terminating: usable only when nothing ready is left.
    pub fn is_serving_terminating(&self) -> bool {
        self.info.serving && self.info.terminating
    }
}

/// One `status.addresses` entry of the Node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP`, ... (host names are not kept).
    pub kind: Arc<str>,
    pub ip: IpAddr,
}

/// What the proxy keeps of its own Node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: Arc<str>,
    pub addresses: Vec<NodeAddress>,
    pub labels: BTreeMap<String, String>,
    /// The node is leaving: `metadata.deletionTimestamp` is set, or the
    /// cluster autoscaler tainted it [`NodeInfo::TO_BE_DELETED_TAINT`]
    /// before deleting it. `/healthz` fails ("nodeEligible": false) so that
    /// load balancers drain the node first, as kube-proxy's does.
    pub deleting: bool,
}

impl NodeInfo {
    /// The taint key the cluster autoscaler puts on a node it is about to delete.
    pub const TO_BE_DELETED_TAINT: &'static str = "ToBeDeletedByClusterAutoscaler";

    /// The well-known zone label.
    pub const ZONE_LABEL: &'static str = "topology.kubernetes.io/zone";

    pub fn zone(&self) -> Option<&str> {
        self.labels.get(Self::ZONE_LABEL).map(String::as_str)
    }

    /// The node's primary address of a family (first InternalIP, else first ExternalIP).
    pub fn primary_ip(&self, family: IpFamily) -> Option<IpAddr> {
        let of_kind = |kind: &str| {
            self.addresses.iter().find(|a| &*a.kind == kind && IpFamily::of(&a.ip) == family).map(|a| a.ip)
        };
        of_kind("InternalIP").or_else(|| of_kind("ExternalIP"))
    }
}
