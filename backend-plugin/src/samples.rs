//! One message of every kind, with every optional field both set and
//! unset: the schema test validates them, `schema/examples-v1.jsonl` holds
//! them for plugin authors, and the daemon's tests replay them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proxy_core::testing::{EndpointBuilder, ServiceBuilder, SliceBuilder, endpoint, initial_list, node};
use proxy_core::{
    BackendContext, ChangeTracker, EmptyVerdict, FamilySet, Frontend, IpFamily, MasqueradeConfig, NetNamespace,
    NodePortAddresses, PlannerConfig, ProgrammedFrontend, ProgrammedState, Protocol, Snapshot, TrackerConfig,
};

use crate::protocol::*;

/// The node the samples are planned for.
pub const NODE: &str = "node-a";

/// A desired state exercising every field: ClusterIP with named ports and
/// zone hints; NodePort with externalTrafficPolicy Local and endpoints on
/// another node only (external traffic dropped, cluster traffic forwarded);
/// a LoadBalancer with source ranges, a VIP and a Proxy-mode ingress,
/// affinity, externalIPs, a health-check node port and terminating
/// endpoints; a Service without endpoints (reject); internalTrafficPolicy Local.
pub fn snapshot() -> Arc<Snapshot> {
    let masquerade = MasqueradeConfig { all: false, cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")] };
    let mut tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig {
        node_name: NODE.into(),
        families: FamilySet::V4,
        masquerade,
    }));
    let ep = |ip: &str, node: &str| -> EndpointBuilder { endpoint(ip).node(node) };
    let services = vec![
        ServiceBuilder::new("default", "web", "10.96.0.10")
            .port("http", 80, "TCP")
            .port("dns", 53, "UDP")
            .traffic_distribution("PreferClose")
            .build(),
        ServiceBuilder::new("default", "np", "10.96.0.11")
            .node_port("", 8080, "TCP", 30080)
            .external_traffic_policy("Local")
            .build(),
        ServiceBuilder::new("prod", "lb", "10.96.0.12")
            .node_port("https", 443, "TCP", 30443)
            .load_balancer_ip("203.0.113.10", Some("VIP"))
            .load_balancer_ip("203.0.113.11", Some("Proxy"))
            .source_ranges(&["198.51.100.0/24"])
            .external_ips(&["192.0.2.50"])
            .affinity(Some(600))
            .external_traffic_policy("Local")
            .health_check_node_port(32000)
            .build(),
        ServiceBuilder::new("default", "empty", "10.96.0.13").port("", 80, "TCP").build(),
        ServiceBuilder::new("default", "itp", "10.96.0.14")
            .port("", 80, "TCP")
            .internal_traffic_policy("Local")
            .build(),
    ];
    let slices = vec![
        SliceBuilder::new("default", "web-1", "web")
            .port("http", 8080, "TCP")
            .port("dns", 5353, "UDP")
            .endpoint(ep("10.244.1.10", NODE).zone("z1").zone_hints(&["z1"]).node_hints(&[NODE]))
            .endpoint(ep("10.244.2.10", "node-b").zone("z2").zone_hints(&["z2"]))
            .build(),
        SliceBuilder::new("default", "np-1", "np").port("", 8080, "TCP").endpoint(ep("10.244.2.11", "node-b")).build(),
        SliceBuilder::new("prod", "lb-1", "lb")
            .port("https", 8443, "TCP")
            .endpoint(ep("10.244.1.12", NODE))
            .endpoint(ep("10.244.1.13", NODE).ready(false).terminating())
            .endpoint(ep("10.244.2.12", "node-b"))
            .build(),
        SliceBuilder::new("default", "itp-1", "itp").port("", 80, "TCP").endpoint(ep("10.244.2.14", "node-b")).build(),
    ];
    for event in initial_list(services, slices, Some(node(NODE, "172.18.0.11", Some("z1")))) {
        tracker.apply(event);
    }
    tracker.snapshot()
}

/// A backend context matching [`snapshot`].
pub fn context() -> BackendContext {
    let mut ctx = BackendContext::new(NODE, NetNamespace::at("/run/netns/sample"));
    ctx.masquerade = snapshot().config.masquerade.clone();
    ctx.node_ips = vec!["172.18.0.11".parse().expect("ip")];
    ctx.nodeport_addresses = NodePortAddresses::Primary;
    ctx.section = serde_json::json!({"command": ["plugin"], "options": {"table": "example"}});
    ctx
}

/// Every message the daemon sends, once.
pub fn daemon_messages() -> Vec<DaemonMessage> {
    let snap = snapshot();
    let ctx = context();
    let masq = &snap.config.masquerade;
    let mut out = vec![DaemonMessage::Hello(Hello {
        id: 1,
        protocol_versions: vec![PROTOCOL_VERSION],
        daemon: "switchyard 0.1.0".into(),
        mode: "plugin".into(),
        context: Context::from_backend(&ctx),
        options: serde_json::json!({"table": "example"}),
    })];
    let mut all_context = Context::from_backend(&BackendContext::new(NODE, NetNamespace::current()));
    all_context.node_ips.clear();
    out.push(DaemonMessage::Hello(Hello {
        id: 1,
        protocol_versions: vec![1],
        daemon: "switchyard 0.1.0".into(),
        mode: "plugin".into(),
        context: all_context,
        options: serde_json::Value::Null,
    }));
    out.push(DaemonMessage::Begin(Begin {
        batch: 2,
        full: true,
        generation: snap.generation,
        services: snap.len() as u64,
        node: snap.node.as_deref().map(Node::from),
    }));
    out.extend(snap.services().map(|p| DaemonMessage::Service(ServiceUpdate::new(p.name(), Some(p), masq))));
    out.push(DaemonMessage::Barrier(Request { id: 2 }));
    out.push(DaemonMessage::Begin(Begin { batch: 3, full: false, generation: 9, services: 1, node: None }));
    let gone = proxy_core::ServiceName::new("default", "gone");
    out.push(DaemonMessage::Service(ServiceUpdate::new(&gone, None, masq)));
    out.push(DaemonMessage::Barrier(Request { id: 3 }));
    out.push(DaemonMessage::Inspect(Request { id: 4 }));
    out.push(DaemonMessage::Cleanup(Request { id: 5 }));
    out
}

/// Every message a plugin sends, once (with optional fields set and unset).
pub fn plugin_messages() -> Vec<PluginMessage> {
    let mut state = snapshot().expected_state();
    state.frontends.insert(
        Frontend::node_port(IpFamily::V6, 30999, Protocol::Udp),
        ProgrammedFrontend { empty_verdict: Some(EmptyVerdict::Reject), ..ProgrammedFrontend::default() },
    );
    vec![
        PluginMessage::Hello(PluginHello {
            id: 1,
            protocol_version: 1,
            plugin: PluginInfo { name: "nft-example".into(), version: "1.0".into() },
            capabilities: vec!["ClusterIP".into(), "NodePort".into(), "Tcp".into()],
        }),
        PluginMessage::Ack(Ack {
            id: 2,
            objects: BTreeMap::from([("rules".to_string(), 12)]),
            warnings: vec![
                Warning { service: Some("default/web".into()), message: "SCTP is not supported; skipped".into() },
                Warning { service: None, message: "IPv6 is not supported".into() },
            ],
        }),
        PluginMessage::Ack(Ack { id: 5, ..Ack::default() }),
        PluginMessage::Error(ErrorReply {
            id: 3,
            error: TypedError {
                kind: ErrorKind::Failed,
                message: "nft -f: exit status 1: Error: Could not process rule".into(),
                operation: Some("nft -f".into()),
                what: None,
                capacity: None,
            },
        }),
        PluginMessage::Error(ErrorReply {
            id: 3,
            error: TypedError {
                kind: ErrorKind::Full,
                message: "service map is full".into(),
                operation: None,
                what: Some("service map".into()),
                capacity: Some(65536),
            },
        }),
        PluginMessage::State(StateReply { id: 4, state }),
        PluginMessage::State(StateReply { id: 4, state: ProgrammedState::default() }),
        PluginMessage::Log(LogMessage { level: LogLevel::Info, message: "nft 1.0.6".into() }),
    ]
}

/// The samples as `schema/examples-v1.jsonl` holds them: one line per
/// message, daemon messages first.
pub fn examples_jsonl() -> String {
    let mut out = String::new();
    for m in daemon_messages() {
        out.push_str(&encode(&m).unwrap_or_default());
    }
    for m in plugin_messages() {
        out.push_str(&encode(&m).unwrap_or_default());
    }
    out
}

/// Services named in a batch, for tests.
pub fn names(messages: &[DaemonMessage]) -> BTreeSet<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            DaemonMessage::Service(s) => Some(format!("{}/{}", s.namespace, s.name)),
            _ => None,
        })
        .collect()
}
