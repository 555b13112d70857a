//! Conversion from k8s-openapi objects to the model, with kube-proxy's exclusions.
//!
//! Input comes from the API server or from files and is untrusted: a bad field
//! skips that field (a port, an address, an endpoint) with a [`ConversionError`]
//! naming the object and the field; an object that cannot be used at all is an
//! `Err`. Nothing here panics on input.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::model::{
    EndpointHints, EndpointInfo, EndpointPortInfo, EndpointSliceInfo, FamilySet, IpFamily, IpMode, LoadBalancerIngress,
    NodeAddress, NodeInfo, Protocol, ServiceInfo, ServiceName, ServicePortInfo, ServiceType, SessionAffinity,
    SliceName, TrafficDistribution, TrafficPolicy,
};

/// Label naming the proxy that should handle an object (kube-proxy skips any object carrying it).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label on EndpointSlices of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label linking an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The kinds of object the proxy reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    Node,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What is wrong with a field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Problem {
    #[error("{0:?} is not an IP address")]
    InvalidIp(String),
    #[error("{0:?} is not a CIDR")]
    InvalidCidr(String),
    #[error("port {0} is out of range 1-65535")]
    PortOutOfRange(i64),
    #[error("unknown protocol {0:?} (expected TCP, UDP or SCTP)")]
    UnknownProtocol(String),
    #[error("IP family {0} is not served by this proxy")]
    FamilyNotServed(IpFamily),
    #[error("is required")]
    Missing,
    #[error("{0}")]
    Invalid(String),
}

/// A field of an object that could not be used, naming both.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{kind} {object}: {field}: {problem}")]
pub struct ConversionError {
    pub kind: ObjectKind,
    /// `namespace/name` (or `name` for cluster-scoped objects).
    pub object: String,
    /// The field path, e.g. `spec.ports[1].port`.
    pub field: String,
    pub problem: Problem,
}

/// Why an object is deliberately not proxied (not an error).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exclusion {
    ExternalName,
    /// `clusterIP: None`.
    Headless,
    /// Labelled `service.kubernetes.io/headless`.
    HeadlessLabel,
    /// Labelled `service.kubernetes.io/service-proxy-name` naming another proxy.
    OtherProxy(String),
    /// An EndpointSlice without the `kubernetes.io/service-name` label.
    NoServiceLabel,
    /// An EndpointSlice of addressType FQDN, or of a family this proxy does not serve.
    AddressType(String),
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::ExternalName => f.write_str("type ExternalName"),
            Exclusion::Headless => f.write_str("headless (clusterIP None)"),
            Exclusion::HeadlessLabel => write!(f, "labelled {LABEL_HEADLESS}"),
            Exclusion::OtherProxy(p) => write!(f, "handled by service proxy {p:?}"),
            Exclusion::NoServiceLabel => write!(f, "no {LABEL_SERVICE_NAME} label"),
            Exclusion::AddressType(t) => write!(f, "addressType {t} not proxied"),
        }
    }
}

/// The outcome of converting an object that is not invalid as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conversion<T> {
    /// Usable; `warnings` lists the fields that were skipped.
    Accepted { value: T, warnings: Vec<ConversionError> },
    /// Deliberately not proxied: treat like a deletion.
    Excluded(Exclusion),
}

/// What conversion needs to know about this proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvertContext {
    pub families: FamilySet,
    /// Our `service.kubernetes.io/service-proxy-name`; objects labelled with
    /// any other value are skipped. `None`: skip every labelled object, as
    /// kube-proxy's label selector does.
    pub service_proxy_name: Option<String>,
}

struct Fields<'a> {
    kind: ObjectKind,
    object: String,
    ctx: &'a ConvertContext,
    warnings: Vec<ConversionError>,
}

impl<'a> Fields<'a> {
    fn new(kind: ObjectKind, meta: &ObjectMeta, ctx: &'a ConvertContext) -> Self {
        let name = meta.name.as_deref().unwrap_or("<unnamed>");
        let object = match meta.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
            _ => name.to_string(),
        };
        Fields { kind, object, ctx, warnings: Vec::new() }
    }

    fn error(&self, field: impl Into<String>, problem: Problem) -> ConversionError {
        ConversionError { kind: self.kind, object: self.object.clone(), field: field.into(), problem }
    }

    fn warn(&mut self, field: impl Into<String>, problem: Problem) {
        let e = self.error(field, problem);
        self.warnings.push(e);
    }

    /// Parses an IP; a bad one or one of a family we do not serve is skipped with a warning.
    fn ip(&mut self, field: String, raw: &str) -> Option<IpAddr> {
        match parse_ip_sloppy(raw) {
            None => {
                self.warn(field, Problem::InvalidIp(raw.to_string()));
                None
            }
            Some(ip) if !self.ctx.families.contains(IpFamily::of(&ip)) => {
                self.warn(field, Problem::FamilyNotServed(IpFamily::of(&ip)));
                None
            }
            Some(ip) => Some(ip),
        }
    }

    fn cidr(&mut self, field: String, raw: &str) -> Option<IpNet> {
        let trimmed = raw.trim();
        let net = trimmed.parse::<IpNet>().ok().or_else(|| parse_ip_sloppy(trimmed).map(IpNet::from));
        match net {
            None => {
                self.warn(field, Problem::InvalidCidr(raw.to_string()));
                None
            }
            Some(net) if !self.ctx.families.contains(IpFamily::of(&net.addr())) => {
                self.warn(field, Problem::FamilyNotServed(IpFamily::of(&net.addr())));
                None
            }
            Some(net) => Some(net.trunc()),
        }
    }

    fn finish<T>(self, value: T) -> Conversion<T> {
        Conversion::Accepted { value, warnings: self.warnings }
    }
}

/// Parses an IP address the way Kubernetes' `ParseIPSloppy` does: IPv4
/// octets may carry leading zeros (read as decimal), which older API servers
/// accepted and Rust's parser rejects. Written by hand because no crate
/// offers Kubernetes' legacy rule.
pub fn parse_ip_sloppy(raw: &str) -> Option<IpAddr> {
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Some(ip);
    }
    let mut octets = [0u8; 4];
    let mut parts = raw.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

fn port_number(value: i64) -> Result<u16, Problem> {
    u16::try_from(value).ok().filter(|p| *p != 0).ok_or(Problem::PortOutOfRange(value))
}

fn protocol(raw: Option<&str>) -> Result<Protocol, Problem> {
    match raw {
        None | Some("") => Ok(Protocol::Tcp),
        Some(p) => Protocol::parse(p).ok_or_else(|| Problem::UnknownProtocol(p.to_string())),
    }
}

fn excluded_by_proxy_name(meta: &ObjectMeta, ctx: &ConvertContext) -> Option<Exclusion> {
    let value = meta.labels.as_ref()?.get(LABEL_SERVICE_PROXY_NAME)?;
    if ctx.service_proxy_name.as_deref() == Some(value.as_str()) {
        None
    } else {
        Some(Exclusion::OtherProxy(value.clone()))
    }
}

fn has_label(meta: &ObjectMeta, label: &str) -> bool {
    meta.labels.as_ref().is_some_and(|l| l.contains_key(label))
}

fn object_name(kind: ObjectKind, meta: &ObjectMeta, namespaced: bool) -> Result<(Arc<str>, Arc<str>), ConversionError> {
    let missing = |field: &str| ConversionError {
        kind,
        object: meta.name.clone().unwrap_or_else(|| "<unnamed>".into()),
        field: field.into(),
        problem: Problem::Missing,
    };
    let name = meta.name.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| missing("metadata.name"))?;
    let namespace = if namespaced {
        meta.namespace.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| missing("metadata.namespace"))?
    } else {
        ""
    };
    Ok((namespace.into(), name.into()))
}

/// The key of a Service object, for deletions (which need no conversion).
pub fn service_key(svc: &Service) -> Result<ServiceName, ConversionError> {
    let (namespace, name) = object_name(ObjectKind::Service, &svc.metadata, true)?;
    Ok(ServiceName { namespace, name })
}

/// The key of an EndpointSlice object.
pub fn slice_key(slice: &EndpointSlice) -> Result<SliceName, ConversionError> {
    let (namespace, name) = object_name(ObjectKind::EndpointSlice, &slice.metadata, true)?;
    Ok(SliceName { namespace, name })
}

/// Converts a Service. `Err` means the object as a whole is unusable.
pub fn service_from_k8s(svc: &Service, ctx: &ConvertContext) -> Result<Conversion<ServiceInfo>, ConversionError> {
    let name = service_key(svc)?;
    let mut f = Fields::new(ObjectKind::Service, &svc.metadata, ctx);
    if let Some(ex) = excluded_by_proxy_name(&svc.metadata, ctx) {
        return Ok(Conversion::Excluded(ex));
    }
    if has_label(&svc.metadata, LABEL_HEADLESS) {
        return Ok(Conversion::Excluded(Exclusion::HeadlessLabel));
    }
    let spec = svc.spec.as_ref().ok_or_else(|| f.error("spec", Problem::Missing))?;
    let service_type = match spec.type_.as_deref() {
        None | Some("") | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return Ok(Conversion::Excluded(Exclusion::ExternalName)),
        Some(other) => return Err(f.error("spec.type", Problem::Invalid(format!("unknown Service type {other:?}")))),
    };

    // clusterIPs holds both families (primary first); older objects may only set clusterIP.
    let raw_ips: Vec<(String, &str)> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => {
            ips.iter().enumerate().map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str())).collect()
        }
        (_, Some(ip)) if !ip.is_empty() => vec![("spec.clusterIP".to_string(), ip.as_str())],
        _ => Vec::new(),
    };
    if raw_ips.iter().any(|(_, ip)| *ip == "None") {
        return Ok(Conversion::Excluded(Exclusion::Headless));
    }
    if raw_ips.is_empty() {
        return Err(f.error("spec.clusterIP", Problem::Missing));
    }
    let mut cluster_ips = Vec::new();
    let mut family_errors = Vec::new();
    for (field, raw) in &raw_ips {
        match parse_ip_sloppy(raw) {
            None => return Err(f.error(field.clone(), Problem::InvalidIp(raw.to_string()))),
            Some(ip) if !ctx.families.contains(IpFamily::of(&ip)) => {
                family_errors.push(f.error(field.clone(), Problem::FamilyNotServed(IpFamily::of(&ip))));
            }
            Some(ip) => cluster_ips.push(ip),
        }
    }
    if cluster_ips.is_empty() {
        // Only families this proxy does not serve: nothing to program here.
        return Err(family_errors.remove(0));
    }

    let mut ports = Vec::new();
    let allocates_node_ports = matches!(service_type, ServiceType::NodePort | ServiceType::LoadBalancer);
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let base = format!("spec.ports[{i}]");
        let proto = match protocol(p.protocol.as_deref()) {
            Ok(proto) => proto,
            Err(problem) => {
                f.warn(format!("{base}.protocol"), problem);
                continue;
            }
        };
        let port = match port_number(p.port.into()) {
            Ok(port) => port,
            Err(problem) => {
                f.warn(format!("{base}.port"), problem);
                continue;
            }
        };
        let node_port = match p.node_port {
            Some(np) if allocates_node_ports && np != 0 => match port_number(np.into()) {
                Ok(np) => Some(np),
                Err(problem) => {
                    f.warn(format!("{base}.nodePort"), problem);
                    None
                }
            },
            _ => None,
        };
        ports.push(ServicePortInfo {
            name: p.name.clone().unwrap_or_default().into(),
            protocol: proto,
            port,
            node_port,
        });
    }

    let external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, raw)| f.ip(format!("spec.externalIPs[{i}]"), raw))
        .collect();

    let mut load_balancer_ingress = Vec::new();
    let mut load_balancer_source_ranges = Vec::new();
    if service_type == ServiceType::LoadBalancer {
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            let Some(raw) = ing.ip.as_deref().filter(|s| !s.is_empty()) else { continue };
            let ip_mode = match ing.ip_mode.as_deref() {
                None | Some("") | Some("VIP") => IpMode::VIP,
                Some("Proxy") => IpMode::Proxy,
                Some(other) => {
                    f.warn(
                        format!("status.loadBalancer.ingress[{i}].ipMode"),
                        Problem::Invalid(format!("unknown ipMode {other:?}")),
                    );
                    continue;
                }
            };
            if let Some(ip) = f.ip(format!("status.loadBalancer.ingress[{i}].ip"), raw) {
                load_balancer_ingress.push(LoadBalancerIngress { ip, ip_mode });
            }
        }
        for (i, raw) in spec.load_balancer_source_ranges.iter().flatten().enumerate() {
            if let Some(net) = f.cidr(format!("spec.loadBalancerSourceRanges[{i}]"), raw) {
                load_balancer_source_ranges.push(net);
            }
        }
    }

    let session_affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let raw = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let timeout_seconds = match raw {
                None => SessionAffinity::DEFAULT_TIMEOUT_SECONDS,
                Some(t) if t > 0 && t as u32 <= SessionAffinity::MAX_TIMEOUT_SECONDS => t as u32,
                Some(t) => {
                    f.warn(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        Problem::Invalid(format!("{t} is outside 1-{}", SessionAffinity::MAX_TIMEOUT_SECONDS)),
                    );
                    SessionAffinity::DEFAULT_TIMEOUT_SECONDS
                }
            };
            SessionAffinity::ClientIP { timeout_seconds }
        }
        None | Some("") | Some("None") => SessionAffinity::None,
        Some(other) => {
            f.warn("spec.sessionAffinity", Problem::Invalid(format!("unknown session affinity {other:?}")));
            SessionAffinity::None
        }
    };

    let mut policy = |field: &str, raw: Option<&str>| match raw {
        None | Some("") | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            f.warn(field, Problem::Invalid(format!("unknown traffic policy {other:?}")));
            TrafficPolicy::Cluster
        }
    };
    let external_traffic_policy = policy("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref());
    let internal_traffic_policy = policy("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref());

    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(p) => match port_number(p.into()) {
            Ok(p) => Some(p),
            Err(problem) => {
                f.warn("spec.healthCheckNodePort", problem);
                None
            }
        },
    };

    let value = ServiceInfo {
        name,
        service_type,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ingress,
        load_balancer_source_ranges,
        session_affinity,
        external_traffic_policy,
        internal_traffic_policy,
        health_check_node_port,
        traffic_distribution: spec.traffic_distribution.as_deref().map(TrafficDistribution::parse),
        created: svc.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()),
    };
    Ok(f.finish(value))
}

/// Converts an EndpointSlice. `Err` means the object as a whole is unusable.
pub fn endpoint_slice_from_k8s(
    slice: &EndpointSlice,
    ctx: &ConvertContext,
) -> Result<Conversion<EndpointSliceInfo>, ConversionError> {
    let name = slice_key(slice)?;
    let mut f = Fields::new(ObjectKind::EndpointSlice, &slice.metadata, ctx);
    if let Some(ex) = excluded_by_proxy_name(&slice.metadata, ctx) {
        return Ok(Conversion::Excluded(ex));
    }
    if has_label(&slice.metadata, LABEL_HEADLESS) {
        return Ok(Conversion::Excluded(Exclusion::HeadlessLabel));
    }
    let Some(service) =
        slice.metadata.labels.as_ref().and_then(|l| l.get(LABEL_SERVICE_NAME)).filter(|s| !s.is_empty())
    else {
        return Ok(Conversion::Excluded(Exclusion::NoServiceLabel));
    };
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        other => return Ok(Conversion::Excluded(Exclusion::AddressType(other.to_string()))),
    };
    if !ctx.families.contains(family) {
        return Ok(Conversion::Excluded(Exclusion::AddressType(slice.address_type.clone())));
    }

    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let base = format!("ports[{i}]");
        let proto = match protocol(p.protocol.as_deref()) {
            Ok(proto) => proto,
            Err(problem) => {
                f.warn(format!("{base}.protocol"), problem);
                continue;
            }
        };
        // A port with no number means "all ports", which Services never produce.
        let Some(raw) = p.port else {
            f.warn(format!("{base}.port"), Problem::Missing);
            continue;
        };
        match port_number(raw.into()) {
            Ok(port) => {
                ports.push(EndpointPortInfo { name: p.name.clone().unwrap_or_default().into(), protocol: proto, port })
            }
            Err(problem) => f.warn(format!("{base}.port"), problem),
        }
    }

    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // Kube-proxy uses the first address; the API guarantees the rest are fungible.
        let Some(raw) = ep.addresses.first() else {
            f.warn(format!("endpoints[{i}].addresses"), Problem::Missing);
            continue;
        };
        let Some(address) = parse_ip_sloppy(raw) else {
            f.warn(format!("endpoints[{i}].addresses[0]"), Problem::InvalidIp(raw.clone()));
            continue;
        };
        if IpFamily::of(&address) != family {
            f.warn(
                format!("endpoints[{i}].addresses[0]"),
                Problem::Invalid(format!("{address} does not match addressType {}", slice.address_type)),
            );
            continue;
        }
        let cond = ep.conditions.as_ref();
        let sorted = |names: Vec<Arc<str>>| {
            let mut names = names;
            names.sort();
            names.dedup();
            names
        };
        let hints = ep.hints.as_ref();
        let zones = sorted(
            hints
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| Arc::from(z.name.as_str()))
                .collect(),
        );
        let nodes = sorted(
            hints
                .and_then(|h| h.for_nodes.as_ref())
                .into_iter()
                .flatten()
                .map(|n| Arc::from(n.name.as_str()))
                .collect(),
        );
        let hints = (!zones.is_empty() || !nodes.is_empty())
            .then(|| Box::new(EndpointHints { zones: zones.into(), nodes: nodes.into() }));
        endpoints.push(Arc::new(EndpointInfo {
            address,
            ready: cond.and_then(|c| c.ready).unwrap_or(true),
            serving: cond.and_then(|c| c.serving).unwrap_or(true),
            terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
            node_name: ep.node_name.as_deref().filter(|n| !n.is_empty()).map(Arc::from),
            zone: ep.zone.as_deref().filter(|z| !z.is_empty()).map(Arc::from),
            hints,
        }));
    }

    let value = EndpointSliceInfo {
        service: ServiceName { namespace: name.namespace.clone(), name: service.as_str().into() },
        name,
        family,
        ports,
        endpoints,
    };
    Ok(f.finish(value))
}

/// Converts this proxy's Node.
pub fn node_from_k8s(node: &Node, ctx: &ConvertContext) -> Result<Conversion<NodeInfo>, ConversionError> {
    let (_, name) = object_name(ObjectKind::Node, &node.metadata, false)?;
    let mut f = Fields::new(ObjectKind::Node, &node.metadata, ctx);
    let mut addresses = Vec::new();
    for (i, a) in node.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten().enumerate() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        match parse_ip_sloppy(&a.address) {
            Some(ip) => addresses.push(NodeAddress { kind: a.type_.as_str().into(), ip }),
            None => f.warn(format!("status.addresses[{i}].address"), Problem::InvalidIp(a.address.clone())),
        }
    }
    let labels: BTreeMap<String, String> = node.metadata.labels.clone().unwrap_or_default();
    let to_be_deleted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == NodeInfo::TO_BE_DELETED_TAINT));
    let deleting = node.metadata.deletion_timestamp.is_some() || to_be_deleted;
    let value = NodeInfo { name, addresses, labels, deleting };
    Ok(f.finish(value))
}
