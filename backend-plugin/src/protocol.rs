//! Protocol v1: the messages between the daemon and a plugin.
//!
//! One JSON object per line (newline-delimited JSON, UTF-8), each with a
//! `type`. The daemon speaks first. Every message type is described in
//! `schema/plugin-protocol-v1.schema.json`; a test keeps that schema and
//! these types in step, and the daemon validates every line it receives
//! against it.
//!
//! ```text
//! daemon → plugin                                 plugin → daemon
//! hello {id, protocol_versions, context, options} hello {id, protocol_version, plugin, capabilities}
//!                                                  (or error {id, error})
//! begin {batch, full, generation, services, node}
//! service {namespace, name, plan | null}   × services
//! barrier {id = batch}                            ack {id, objects, warnings} | error {id, error}
//! inspect {id}                                    state {id, state}
//! cleanup {id}                                    ack {id} | error {id, error}
//!                                                 log {level, message}   (any time)
//! ```
//!
//! A batch is `begin`, its `service` messages, then `barrier`. With `full:
//! true` the services in the batch are the whole desired state (forget any
//! other); otherwise each `service` replaces or (with `plan: null`) deletes
//! one Service. The daemon sends the next batch only after the plugin
//! answered the barrier. After a connect, a restart, an error reply or a
//! timeout, the next batch is full.
//!
//! The plans are the core's decisions, flattened for a plugin: each port
//! carries its flow table (`proxy_core::FlowTable`, the same table every
//! built-in backend renders): per frontend and class of source (`pod`,
//! `node`, `external`), which route applies and whether to masquerade, the
//! routes themselves and the hairpin set. Version 1 names the routes by
//! where they apply (`internal`: ClusterIP traffic; `external`: outside
//! traffic to external frontends; `external_from_cluster`: pods and the node
//! at external frontends); each is the table's route for those cells. A
//! plugin never re-decides Service semantics.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use proxy_core::{
    Endpoint, FamilySet, FrontendKind, IpFamily, IpMode, MasqueradeConfig, NodeInfo, ProgrammedState, Protocol, Route,
    ServiceInfo, ServicePlan, ServicePortPlan, ServiceType, SessionAffinity, SourceClass, TrafficDistribution,
    TrafficPolicy,
};
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

// ---------------------------------------------------------------------------
// daemon → plugin

/// A line the daemon sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DaemonMessage {
    Hello(Hello),
    Begin(Begin),
    Service(ServiceUpdate),
    Barrier(Request),
    Inspect(Request),
    Cleanup(Request),
}

impl DaemonMessage {
    /// The `type` on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            DaemonMessage::Hello(_) => "hello",
            DaemonMessage::Begin(_) => "begin",
            DaemonMessage::Service(_) => "service",
            DaemonMessage::Barrier(_) => "barrier",
            DaemonMessage::Inspect(_) => "inspect",
            DaemonMessage::Cleanup(_) => "cleanup",
        }
    }
}

/// The daemon's first message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub id: u64,
    /// The versions the daemon speaks; the plugin picks one.
    pub protocol_versions: Vec<u32>,
    /// `switchyard 0.1.0`.
    pub daemon: String,
    /// The `--proxy-mode` (`plugin`).
    pub mode: String,
    pub context: Context,
    /// The plugin's own settings: the `options` of the `plugin:` section, passed through.
    pub options: serde_json::Value,
}

/// What the plugin programs, fixed for the life of a connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub node_name: String,
    /// The IP families this node's proxy serves.
    pub families: Vec<IpFamily>,
    /// The network namespace to program (a path such as `/run/netns/lab-node1`),
    /// `null` for the plugin's own. A started plugin already runs inside it.
    pub netns: Option<String>,
    /// The node's primary addresses.
    pub node_ips: Vec<IpAddr>,
    /// Which local addresses accept node ports: `null` for every local
    /// address, else the local addresses inside these CIDRs.
    pub nodeport_cidrs: Option<Vec<IpNet>>,
    pub masquerade: Masquerade,
}

/// How sources are classified (the masquerade decisions themselves come precomputed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Masquerade {
    /// `--masquerade-all`.
    pub all: bool,
    /// `--cluster-cidr`: sources inside are `pod`; a local source address is
    /// `node`; anything else `external`. Empty: no source is `pod`.
    pub cluster_cidrs: Vec<IpNet>,
}

/// Opens a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Begin {
    /// The id the closing `barrier` carries.
    pub batch: u64,
    /// The services that follow are the whole desired state.
    pub full: bool,
    /// The core's generation of the desired state (increases).
    pub generation: u64,
    /// How many `service` messages follow.
    pub services: u64,
    /// This node, when known.
    pub node: Option<Node>,
}

/// This node, as the core sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub addresses: Vec<NodeAddress>,
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
    /// The Node is being deleted.
    pub deleting: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP`.
    pub kind: String,
    pub ip: IpAddr,
}

/// One Service's new plan, or its deletion (`plan: null`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceUpdate {
    pub namespace: String,
    pub name: String,
    pub plan: Option<ServicePlanWire>,
}

/// A request that is answered: `barrier`, `inspect`, `cleanup`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: u64,
}

/// A Service's plan: what the Service is, and the core's decision per port and family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePlanWire {
    pub service: ServiceWire,
    pub ports: Vec<PortPlan>,
}

/// The Service as the core keeps it (every field a proxy uses).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceWire {
    pub service_type: ServiceType,
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ingress: Vec<LoadBalancerIngress>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `None` or `ClientIP`.
    pub session_affinity: String,
    pub session_affinity_timeout_seconds: Option<u32>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub health_check_node_port: Option<u16>,
    pub traffic_distribution: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerIngress {
    pub ip: IpAddr,
    /// `VIP` (the proxy captures it) or `Proxy` (it does not).
    pub ip_mode: IpMode,
}

/// The core's decision for one (Service port, IP family).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortPlan {
    /// The port's `name` (empty for a single unnamed port).
    pub port_name: String,
    /// `namespace/name:port`, for comments and logs.
    pub label: String,
    pub protocol: Protocol,
    pub family: IpFamily,
    pub port: u16,
    pub cluster_ip: Option<IpAddr>,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer IPs the proxy captures (ipMode VIP).
    pub load_balancer_ips: Vec<IpAddr>,
    pub source_ranges: Vec<IpNet>,
    pub affinity_timeout_seconds: Option<u32>,
    pub health_check_node_port: Option<u16>,
    pub external_policy_local: bool,
    pub local_ready_endpoints: u64,
    pub has_endpoints: bool,
    pub routes: Routes,
    /// Every frontend of this port, with the per-source table.
    pub frontends: Vec<FrontendPlan>,
    /// Endpoints (`ip:port`) whose connections to themselves through this
    /// port are masqueraded (hairpin), sorted: the core's hairpin set.
    #[serde(default)]
    pub hairpin: Vec<SocketAddr>,
}

/// The three routes of a port (see `proxy_core::ServicePortPlan`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    /// ClusterIP traffic, after internalTrafficPolicy.
    pub internal: RouteWire,
    /// External frontends, sources outside the cluster, after externalTrafficPolicy.
    pub external: RouteWire,
    /// External frontends, sources in the cluster (pods, the node).
    pub external_from_cluster: RouteWire,
}

/// Which of [`Routes`] a class of source uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteName {
    Internal,
    External,
    ExternalFromCluster,
}

/// `Forward` to the endpoints (never empty), `Reject` (refuse at once:
/// the Service has no endpoint at all) or `Drop` (silently).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteWire {
    pub verdict: Verdict,
    pub endpoints: Vec<EndpointWire>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Forward,
    Reject,
    Drop,
}

/// An endpoint with every field of its EndpointSlice entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointWire {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
    /// On this node.
    pub is_local: bool,
}

/// A frontend and what each class of source gets there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendPlan {
    pub kind: FrontendKind,
    /// `null` for `NodePort` (every node-port address of the node).
    pub ip: Option<IpAddr>,
    pub family: IpFamily,
    pub port: u16,
    pub protocol: Protocol,
    /// Sources in the cluster CIDRs.
    pub pod: ClassFlow,
    /// Sources that are local addresses of the node (host network).
    pub node: ClassFlow,
    /// Everything else.
    pub external: ClassFlow,
    /// Non-empty: drop sources outside these ranges, except `node` sources.
    pub source_ranges: Vec<IpNet>,
}

/// What one class of source gets at a frontend. Independently of this,
/// a connection whose chosen endpoint is its own source and in the port's
/// `hairpin` set is masqueraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassFlow {
    pub route: RouteName,
    pub masquerade: bool,
}

// ---------------------------------------------------------------------------
// plugin → daemon

/// A line a plugin sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PluginMessage {
    Hello(PluginHello),
    Ack(Ack),
    Error(ErrorReply),
    State(StateReply),
    Log(LogMessage),
}

impl PluginMessage {
    /// The `type` on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            PluginMessage::Hello(_) => "hello",
            PluginMessage::Ack(_) => "ack",
            PluginMessage::Error(_) => "error",
            PluginMessage::State(_) => "state",
            PluginMessage::Log(_) => "log",
        }
    }

    /// The request this answers, if it is an answer.
    pub fn reply_to(&self) -> Option<u64> {
        match self {
            PluginMessage::Hello(m) => Some(m.id),
            PluginMessage::Ack(m) => Some(m.id),
            PluginMessage::Error(m) => Some(m.id),
            PluginMessage::State(m) => Some(m.id),
            PluginMessage::Log(_) => None,
        }
    }
}

/// The plugin's answer to `hello`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginHello {
    pub id: u64,
    /// One of the daemon's `protocol_versions`.
    pub protocol_version: u32,
    pub plugin: PluginInfo,
    /// `proxy_core::Capability` names; unknown names are ignored with a warning.
    pub capabilities: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
}

/// Success: a barrier's batch is programmed, or a cleanup is done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub id: u64,
    /// Counts of kernel objects the plugin owns, by kind (metrics, logs).
    #[serde(default)]
    pub objects: BTreeMap<String, u64>,
    /// Objects the plugin skipped (a bad object never fails a sync).
    #[serde(default)]
    pub warnings: Vec<Warning>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warning {
    /// `namespace/name`, when it concerns one Service.
    #[serde(default)]
    pub service: Option<String>,
    pub message: String,
}

/// Failure of a request; the previous kernel state stays in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    pub id: u64,
    pub error: TypedError,
}

/// The plugin's error, typed as `proxy_core::DataplaneError` is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedError {
    pub kind: ErrorKind,
    pub message: String,
    /// `failed`: what failed (`nft -f`, `map update`).
    #[serde(default)]
    pub operation: Option<String>,
    /// `full`: which table is full, and its size.
    #[serde(default)]
    pub what: Option<String>,
    #[serde(default)]
    pub capacity: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// An operation failed; retried with backoff and a full batch.
    Failed,
    /// The node cannot run this plugin (answer to `hello`: exit 3).
    Unavailable,
    /// A kernel table is full.
    Full,
    /// The plugin's `options` are invalid (answer to `hello`).
    Config,
}

/// The answer to `inspect`: what the kernel holds, read back (never from memory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateReply {
    pub id: u64,
    /// The format `switchyard inspect -o json` prints under `programmed`.
    pub state: ProgrammedState,
}

/// A log line from the plugin, relayed into the daemon's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogMessage {
    pub level: LogLevel,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

// ---------------------------------------------------------------------------
// conversions from the core

impl Context {
    /// The context for a backend context: NodePort addresses resolved to
    /// CIDRs (`primary` becomes the node's primary IPs).
    pub fn from_backend(ctx: &proxy_core::BackendContext) -> Context {
        let host = |ip: &IpAddr| IpNet::from(*ip);
        let nodeport_cidrs = match &ctx.nodeport_addresses {
            proxy_core::NodePortAddresses::All => None,
            proxy_core::NodePortAddresses::Primary => Some(ctx.node_ips.iter().map(host).collect()),
            proxy_core::NodePortAddresses::Cidrs(c) => Some(c.clone()),
        };
        Context {
            node_name: ctx.node_name.to_string(),
            families: families(ctx.families),
            netns: ctx.netns.path().map(|p| p.display().to_string()),
            node_ips: ctx.node_ips.clone(),
            nodeport_cidrs,
            masquerade: Masquerade::from(&ctx.masquerade),
        }
    }
}

fn families(set: FamilySet) -> Vec<IpFamily> {
    set.iter().collect()
}

impl From<&MasqueradeConfig> for Masquerade {
    fn from(m: &MasqueradeConfig) -> Self {
        Masquerade { all: m.all, cluster_cidrs: m.cluster_cidrs.clone() }
    }
}

impl From<&Masquerade> for MasqueradeConfig {
    fn from(m: &Masquerade) -> Self {
        MasqueradeConfig { all: m.all, cluster_cidrs: m.cluster_cidrs.clone() }
    }
}

impl From<&NodeInfo> for Node {
    fn from(n: &NodeInfo) -> Self {
        Node {
            name: n.name.to_string(),
            addresses: n.addresses.iter().map(|a| NodeAddress { kind: a.kind.to_string(), ip: a.ip }).collect(),
            zone: n.zone().map(str::to_string),
            deleting: n.deleting,
        }
    }
}

impl From<&ServiceInfo> for ServiceWire {
    fn from(s: &ServiceInfo) -> Self {
        let (affinity, timeout) = match s.session_affinity {
            SessionAffinity::None => ("None", None),
            SessionAffinity::ClientIP { timeout_seconds } => ("ClientIP", Some(timeout_seconds)),
        };
        ServiceWire {
            service_type: s.service_type,
            cluster_ips: s.cluster_ips.clone(),
            external_ips: s.external_ips.clone(),
            load_balancer_ingress: s
                .load_balancer_ingress
                .iter()
                .map(|i| LoadBalancerIngress { ip: i.ip, ip_mode: i.ip_mode })
                .collect(),
            load_balancer_source_ranges: s.load_balancer_source_ranges.clone(),
            session_affinity: affinity.to_string(),
            session_affinity_timeout_seconds: timeout,
            external_traffic_policy: s.external_traffic_policy,
            internal_traffic_policy: s.internal_traffic_policy,
            health_check_node_port: s.health_check_node_port,
            traffic_distribution: s.traffic_distribution.as_ref().map(|t| match t {
                TrafficDistribution::PreferClose => "PreferClose".to_string(),
                TrafficDistribution::PreferSameZone => "PreferSameZone".to_string(),
                TrafficDistribution::PreferSameNode => "PreferSameNode".to_string(),
                TrafficDistribution::Other(o) => o.to_string(),
            }),
        }
    }
}

impl From<&Endpoint> for EndpointWire {
    fn from(e: &Endpoint) -> Self {
        let names = |v: &[std::sync::Arc<str>]| v.iter().map(|s| s.to_string()).collect();
        EndpointWire {
            ip: e.ip(),
            port: e.port,
            ready: e.info.ready,
            serving: e.info.serving,
            terminating: e.info.terminating,
            node_name: e.info.node_name.as_ref().map(|s| s.to_string()),
            zone: e.info.zone.as_ref().map(|s| s.to_string()),
            zone_hints: names(e.info.zone_hints()),
            node_hints: names(e.info.node_hints()),
            is_local: e.is_local,
        }
    }
}

impl From<&Route> for RouteWire {
    fn from(r: &Route) -> Self {
        let verdict = match r {
            Route::Forward(_) => Verdict::Forward,
            Route::Reject => Verdict::Reject,
            Route::Drop => Verdict::Drop,
        };
        RouteWire { verdict, endpoints: r.endpoints().iter().map(EndpointWire::from).collect() }
    }
}

impl PortPlan {
    /// Flattens a port plan's flow table ([`ServicePortPlan::flow_table`]).
    pub fn from_core(plan: &ServicePortPlan, masq: &MasqueradeConfig) -> PortPlan {
        let table = plan.flow_table(masq);
        // Version 1's route names say where a route applies; the cell's
        // route is the table's route for that place.
        let class_flow = |kind: FrontendKind, class: SourceClass, cell: &proxy_core::ClassFlow| {
            let name = match (kind, class) {
                (FrontendKind::ClusterIP, _) => RouteName::Internal,
                (_, SourceClass::External) => RouteName::External,
                _ => RouteName::ExternalFromCluster,
            };
            debug_assert_eq!(table.route(cell.route), plan.route_for(kind, class));
            ClassFlow { route: name, masquerade: cell.masquerade }
        };
        let frontends = table
            .frontends
            .iter()
            .map(|f| {
                let fe = f.frontend;
                FrontendPlan {
                    kind: fe.kind,
                    ip: fe.ip,
                    family: fe.family,
                    port: fe.port,
                    protocol: fe.protocol,
                    pod: class_flow(fe.kind, SourceClass::Pod, &f.pod),
                    node: class_flow(fe.kind, SourceClass::Node, &f.node),
                    external: class_flow(fe.kind, SourceClass::External, &f.external),
                    source_ranges: if f.external.source_ranges { table.source_ranges.clone() } else { vec![] },
                }
            })
            .collect();
        PortPlan {
            port_name: plan.name.port.to_string(),
            label: plan.name.to_string(),
            protocol: plan.protocol,
            family: plan.family,
            port: plan.port,
            cluster_ip: plan.cluster_ip,
            node_port: plan.node_port,
            external_ips: plan.external_ips.clone(),
            load_balancer_ips: plan.load_balancer_ips.clone(),
            source_ranges: plan.source_ranges.clone(),
            affinity_timeout_seconds: plan.affinity_timeout_seconds,
            health_check_node_port: plan.health_check_node_port,
            external_policy_local: plan.external_policy_local,
            local_ready_endpoints: plan.local_ready_endpoints as u64,
            has_endpoints: plan.has_endpoints,
            routes: Routes {
                internal: RouteWire::from(plan.internal()),
                external: RouteWire::from(plan.external()),
                external_from_cluster: RouteWire::from(plan.external_from_cluster()),
            },
            frontends,
            hairpin: table.hairpin,
        }
    }
}

impl ServicePlanWire {
    pub fn from_core(plan: &ServicePlan, masq: &MasqueradeConfig) -> ServicePlanWire {
        ServicePlanWire {
            service: ServiceWire::from(plan.service.as_ref()),
            ports: plan.ports.iter().map(|p| PortPlan::from_core(p, masq)).collect(),
        }
    }
}

impl ServiceUpdate {
    /// The update for one Service: its plan, or its deletion.
    pub fn new(name: &proxy_core::ServiceName, plan: Option<&ServicePlan>, masq: &MasqueradeConfig) -> Self {
        ServiceUpdate {
            namespace: name.namespace.to_string(),
            name: name.name.to_string(),
            plan: plan.map(|p| ServicePlanWire::from_core(p, masq)),
        }
    }
}

/// Encodes one message as a line (with the trailing newline).
pub fn encode<T: Serialize>(message: &T) -> Result<String, serde_json::Error> {
    let mut line = serde_json::to_string(message)?;
    line.push('\n');
    Ok(line)
}

/// Why a line a plugin sent is not a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineError {
    /// Not JSON at all; `reason` quotes the start of the line.
    NotJson { reason: String },
    /// JSON, but not a valid message: a schema violation or a shape serde refuses.
    Invalid { type_name: String, reason: String },
}

/// Decodes one line from a plugin (with or without its newline; invalid
/// UTF-8 is replaced, then refused by the parser or the schema): `None`
/// for a blank line (keepalives, pretty printers). The line is checked
/// against the schema before it is read as a [`PluginMessage`], so a
/// plugin learns which field is wrong. Never panics, whatever the bytes:
/// the `plugin_line` fuzz target holds it to that.
pub fn decode_plugin_line(raw: &[u8]) -> Result<Option<PluginMessage>, LineError> {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| LineError::NotJson { reason: format!("not JSON ({e}): {}", excerpt(text)) })?;
    let type_name = value.get("type").and_then(|t| t.as_str()).unwrap_or("?").to_string();
    let violations = crate::schema::validate(crate::schema::Direction::FromPlugin, &value);
    if !violations.is_empty() {
        let reasons: Vec<String> = violations.iter().map(ToString::to_string).collect();
        return Err(LineError::Invalid { type_name, reason: reasons.join("; ") });
    }
    serde_json::from_value(value).map(Some).map_err(|e| LineError::Invalid { type_name, reason: e.to_string() })
}

/// The start of a line, quoted, for error messages.
fn excerpt(text: &str) -> String {
    let mut s: String = text.chars().take(80).collect();
    if text.chars().count() > 80 {
        s.push('…');
    }
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::samples;
    use crate::schema::{self, Direction};

    #[test]
    fn decodes_a_line_or_says_why_not() {
        assert_eq!(decode_plugin_line(b"  \r\n"), Ok(None), "blank lines are keepalives");
        let ack = br#"{"type":"ack","id":7}"#;
        assert!(matches!(decode_plugin_line(ack), Ok(Some(PluginMessage::Ack(a))) if a.id == 7));
        match decode_plugin_line(b"{\"type\":\"ack\"") {
            Err(LineError::NotJson { reason }) => assert!(reason.starts_with("not JSON"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match decode_plugin_line(br#"{"type":"ack","id":"seven"}"#) {
            Err(LineError::Invalid { type_name, reason }) => {
                assert_eq!(type_name, "ack");
                assert!(reason.contains("id"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Invalid UTF-8 is refused, not a panic.
        assert!(decode_plugin_line(b"{\"type\":\"log\",\"level\":\"info\",\"message\":\"\xff\"}").is_ok());
        assert!(decode_plugin_line(b"\xff\xfe").is_err());
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples::daemon_messages() {
            let line = encode(&m).expect("encodes");
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'), "one line: {line}");
            let back: DaemonMessage = serde_json::from_str(&line).expect("decodes");
            assert_eq!(back, m);
        }
        for m in samples::plugin_messages() {
            let line = encode(&m).expect("encodes");
            let back: PluginMessage = serde_json::from_str(&line).expect("decodes");
            assert_eq!(back, m);
        }
    }

    /// The schema and the Rust types agree: every sample validates (the
    /// schema forbids unknown properties, so a field added in Rust fails
    /// here), and together the samples use every property the schema
    /// declares (so a field removed from Rust fails here too).
    #[test]
    fn the_schema_matches_the_rust_types() {
        let mut seen = BTreeSet::new();
        for m in samples::daemon_messages() {
            let v = serde_json::to_value(&m).expect("serializes");
            let problems = schema::validate_recording(Direction::ToPlugin, &v, &mut seen);
            assert!(problems.is_empty(), "{} violates the schema: {problems:?}", m.type_name());
        }
        for m in samples::plugin_messages() {
            let v = serde_json::to_value(&m).expect("serializes");
            let problems = schema::validate_recording(Direction::FromPlugin, &v, &mut seen);
            assert!(problems.is_empty(), "{} violates the schema: {problems:?}", m.type_name());
        }
        let unused: Vec<String> = schema::declared().difference(&seen).cloned().collect();
        assert!(unused.is_empty(), "the schema declares what no sample sends (removed from Rust?): {unused:?}");
    }

    #[test]
    fn the_examples_file_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/examples-v1.jsonl");
        let want = samples::examples_jsonl();
        if std::env::var_os("SWITCHYARD_BLESS").is_some() {
            std::fs::write(path, &want).expect("writes the examples");
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(have == want, "{path} is stale: run `SWITCHYARD_BLESS=1 cargo test -p backend-plugin` and commit it");
    }

    #[test]
    fn frontends_carry_the_cores_decisions() {
        let snap = samples::snapshot();
        let masq = &snap.config.masquerade;
        let np = snap.service(&proxy_core::ServiceName::new("default", "np")).expect("np");
        let wire = ServicePlanWire::from_core(np, masq);
        let port = &wire.ports[0];
        // externalTrafficPolicy Local, no endpoint on this node: outside traffic is
        // dropped, pods and the node still reach the remote endpoint.
        assert_eq!(port.routes.external.verdict, Verdict::Drop);
        assert_eq!(port.routes.external_from_cluster.verdict, Verdict::Forward);
        let node_port = port.frontends.iter().find(|f| f.kind == FrontendKind::NodePort).expect("node port");
        assert_eq!(node_port.external, ClassFlow { route: RouteName::External, masquerade: false });
        assert_eq!(node_port.pod, ClassFlow { route: RouteName::ExternalFromCluster, masquerade: false });
        assert_eq!(node_port.node, ClassFlow { route: RouteName::ExternalFromCluster, masquerade: true });
        let cluster = port.frontends.iter().find(|f| f.kind == FrontendKind::ClusterIP).expect("cluster ip");
        assert_eq!(cluster.pod, ClassFlow { route: RouteName::Internal, masquerade: false });
        assert_eq!(cluster.external, ClassFlow { route: RouteName::Internal, masquerade: true });
        // Every (frontend, class) agrees with the core's flow().
        for plan in snap.port_plans() {
            let wire = PortPlan::from_core(plan, masq);
            for (f, fw) in plan.frontends().zip(&wire.frontends) {
                for (class, cf) in
                    [(SourceClass::Pod, fw.pod), (SourceClass::Node, fw.node), (SourceClass::External, fw.external)]
                {
                    let flow = plan.flow_for_class(f.kind, class, masq);
                    let route = match cf.route {
                        RouteName::Internal => plan.internal(),
                        RouteName::External => plan.external(),
                        RouteName::ExternalFromCluster => plan.external_from_cluster(),
                    };
                    assert_eq!(plan.route(flow.route), route, "{f} {class:?}");
                    assert_eq!(flow.masquerade, cf.masquerade, "{f} {class:?}");
                }
            }
        }
        // The LB frontend carries the source ranges; the Proxy-mode ingress is not captured.
        let lb = snap.service(&proxy_core::ServiceName::new("prod", "lb")).expect("lb");
        let wire = ServicePlanWire::from_core(lb, masq);
        let lbs: Vec<_> = wire.ports[0].frontends.iter().filter(|f| f.kind == FrontendKind::LoadBalancer).collect();
        assert_eq!(lbs.len(), 1);
        assert_eq!(lbs[0].source_ranges, vec!["198.51.100.0/24".parse::<IpNet>().expect("cidr")]);
        assert_eq!(wire.service.load_balancer_ingress[1].ip_mode, IpMode::Proxy);
        assert_eq!(wire.service.session_affinity_timeout_seconds, Some(600));
    }
}
