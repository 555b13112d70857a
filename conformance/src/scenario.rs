//! Scenarios as data: the YAML format, its parser and validation.
//!
//! A scenario file holds real Kubernetes objects (Services, EndpointSlices,
//! optionally the Node) and then steps: probes with expectations, object
//! updates with a convergence bound, waits, backend restarts, churn. The
//! format is documented in `conformance/README.md`; [`Scenario::parse`] is
//! its reference.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_core::{Capability, IpFamily, ProxyEvent, ResourceEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::addresses;
use crate::agent::{EchoPorts, Proto};
use crate::error::{ConformanceError, Result};

/// A duration written as Go writes one: `500ms`, `2s`, `1.5s` or `1m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Dur(pub Duration);

impl From<Dur> for String {
    fn from(d: Dur) -> String {
        format!("{}ms", d.0.as_millis())
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

/// Parses a Go duration (`500ms`, `2s`, `1.5s`, `1m`) with the workspace's
/// one parser; a negative one is refused.
pub fn parse_duration(s: &str) -> Option<Duration> {
    proxy_core::duration::parse_duration(s).ok()
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        // Strings in Go's grammar only: a bare number has no unit, as in Go.
        let parsed = match &v {
            Value::String(s) => parse_duration(s),
            _ => None,
        };
        parsed.map(Dur).ok_or_else(|| serde::de::Error::custom(format!("{v} is not a duration (500ms, 2s)")))
    }
}

/// `to:` — where a probe goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Target {
    /// A literal `IP:port` (`[v6]:port`).
    Literal(SocketAddr),
    /// A frontend of a Service, resolved against the objects at probe time.
    Service(ServiceTarget),
}

/// Which frontend of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Via {
    #[serde(rename = "clusterIP")]
    ClusterIP,
    NodePort,
    #[serde(rename = "externalIP")]
    ExternalIP,
    LoadBalancer,
}

/// A Service frontend, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceTarget {
    pub service: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub via: Via,
    /// The Service port's name or number; may be omitted for a single-port Service.
    #[serde(default)]
    pub port: Option<PortRef>,
    /// For NodePorts: which node address (`node1`, `node1-ext`, `node1-gw`, `node2`).
    #[serde(default)]
    pub node: Option<String>,
    /// For externalIPs and load-balancer IPs: which entry (default 0).
    #[serde(default)]
    pub index: usize,
    #[serde(default)]
    pub family: Option<IpFamily>,
}

fn default_namespace() -> String {
    "default".into()
}

/// A Service port by name or number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// The expected source address an endpoint sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SourceExpect {
    /// The client's own address.
    Preserved,
    /// One of node1's addresses.
    Masqueraded,
}

/// What a probe must observe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expectation {
    /// The allowed endpoints (host names): every answer comes from one of
    /// them, and each is hit at least once (unless `sticky`).
    #[serde(default)]
    pub endpoints: Option<BTreeSet<String>>,
    /// Each endpoint's share of answers is within this distance of an even split.
    #[serde(default)]
    pub split: Option<f64>,
    /// Every attempt is refused (RST / ICMP unreachable), quickly.
    #[serde(default)]
    pub refused: bool,
    /// Every attempt times out: nothing comes back.
    #[serde(default)]
    pub dropped: bool,
    /// Not handled by the proxy: no attempt is answered (refused, dropped or unreachable).
    #[serde(default)]
    pub not_served: bool,
    #[serde(default)]
    pub source: Option<SourceExpect>,
    /// Every answer comes from the same endpoint.
    #[serde(default)]
    pub sticky: bool,
    /// How fast a refusal must come (default 500ms).
    #[serde(default)]
    pub refused_within: Option<Dur>,
}

impl Expectation {
    /// What kind of answer this expects, for validation and the oracle.
    pub fn verdict(&self) -> Option<ExpectedVerdict> {
        match (self.endpoints.is_some(), self.refused, self.dropped, self.not_served) {
            (true, false, false, false) => Some(ExpectedVerdict::Forward),
            (false, true, false, false) => Some(ExpectedVerdict::Refused),
            (false, false, true, false) => Some(ExpectedVerdict::Dropped),
            (false, false, false, true) => Some(ExpectedVerdict::NotServed),
            _ => None,
        }
    }
}

/// The one kind of answer an expectation names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVerdict {
    Forward,
    Refused,
    Dropped,
    NotServed,
}

/// One probe: from a lab host to a target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    /// A lab host: a pod (`a1`, `client1`, ...), `node1`, `node2` or `external`.
    pub from: String,
    pub to: Target,
    /// Defaults to the Service port's protocol, or TCP for literal targets.
    #[serde(default)]
    pub protocol: Option<Proto>,
    #[serde(default = "default_count")]
    pub count: u32,
    /// Send every attempt from this source port (one UDP flow).
    #[serde(default)]
    pub source_port: Option<u16>,
    /// Per-attempt timeout (default 800ms); a dropped probe waits this long.
    #[serde(default)]
    pub timeout: Option<Dur>,
}

fn default_count() -> u32 {
    20
}

/// A reference to an object to delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    pub kind: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub name: String,
}

/// Object changes between probes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Update {
    /// Objects created or replaced.
    #[serde(default)]
    pub apply: Vec<Value>,
    #[serde(default)]
    pub delete: Vec<ObjectRef>,
}

/// Hundreds of EndpointSlice updates in a row, then a final state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Churn {
    /// `namespace/name` of an EndpointSlice in the scenario.
    pub slice: String,
    pub updates: u32,
    /// Hosts whose addresses the intermediate states pick from.
    pub pool: Vec<String>,
    /// The hosts of the final state.
    #[serde(rename = "final")]
    pub final_hosts: Vec<String>,
}

/// Rounds of (one probe, wait) until more than one endpoint answered: the
/// affinity entry expired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AffinityExpiry {
    pub from: String,
    pub to: Target,
    #[serde(default)]
    pub protocol: Option<Proto>,
    /// The pause between rounds; longer than the affinity timeout.
    pub wait: Dur,
    #[serde(default = "default_rounds")]
    pub rounds: u32,
}

fn default_rounds() -> u32 {
    15
}

/// Opens a TCP connection and keeps it for a later `check`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hold {
    pub name: String,
    pub from: String,
    pub to: Target,
}

/// A backend restart with its rules in place.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Restart {
    /// New connections made while the backend restarts; none may fail.
    #[serde(default)]
    pub probe_during: Option<Probe>,
}

/// One step, as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepSpec {
    /// A label for the report.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub probe: Option<Probe>,
    #[serde(default)]
    pub update: Option<Update>,
    #[serde(default)]
    pub churn: Option<Churn>,
    #[serde(default)]
    pub wait: Option<Dur>,
    #[serde(default)]
    pub hold: Option<Hold>,
    /// The name of a held connection that must still answer from the same endpoint.
    #[serde(default)]
    pub check: Option<String>,
    #[serde(default)]
    pub restart: Option<Restart>,
    #[serde(default)]
    pub affinity_expiry: Option<AffinityExpiry>,
    #[serde(default)]
    pub expect: Option<Expectation>,
    /// Bound: for updates, how long the proxy may take to converge; for
    /// probes, how long they may be retried (default: the patience).
    #[serde(default)]
    pub within: Option<Dur>,
}

/// One step, validated.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Probe { probe: Probe, expect: Expectation },
    Update { update: Update },
    Churn { churn: Churn },
    Wait { duration: Duration },
    Hold { hold: Hold, expect: Expectation },
    Check { name: String },
    Restart { restart: Restart },
    AffinityExpiry { expiry: AffinityExpiry, expect: Expectation },
}

impl Step {
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Probe { .. } => "probe",
            Step::Update { .. } => "update",
            Step::Churn { .. } => "churn",
            Step::Wait { .. } => "wait",
            Step::Hold { .. } => "hold",
            Step::Check { .. } => "check",
            Step::Restart { .. } => "restart",
            Step::AffinityExpiry { .. } => "affinityExpiry",
        }
    }
}

/// A validated step with its label and bound.
#[derive(Clone, Debug, PartialEq)]
pub struct StepEntry {
    pub label: String,
    pub step: Step,
    pub within: Option<Duration>,
}

/// `nodePortAddresses` in a scenario's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NodePortAddressesSpec {
    /// `primary`, or `all`.
    Keyword(String),
    Cidrs(Vec<IpNet>),
}

/// The proxy's configuration for one scenario.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioConfig {
    /// `--masquerade-all`.
    #[serde(default)]
    pub masquerade_all: bool,
    /// `--cluster-cidr`; absent means the lab's pod CIDRs, `[]` turns local-traffic detection off.
    #[serde(default, rename = "clusterCIDRs")]
    pub cluster_cidrs: Option<Vec<IpNet>>,
    /// The IP families the proxy serves (default IPv4).
    #[serde(default)]
    pub families: Option<Vec<IpFamily>>,
    #[serde(default)]
    pub node_port_addresses: Option<NodePortAddressesSpec>,
}

/// A scenario file as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: String,
    pub description: String,
    /// Backend capabilities this scenario needs (`Capability` names).
    #[serde(default)]
    pub requires: Vec<Capability>,
    #[serde(default)]
    pub config: ScenarioConfig,
    pub objects: Vec<Value>,
    pub steps: Vec<StepSpec>,
    /// Upstream kube-proxy behaves differently here on purpose: why, and
    /// where docs/semantics.md explains it, for every upstream mode or per
    /// mode. A `kube-proxy-*` backend failing the scenario is then reported
    /// as "differs"; passing it fails (the note is stale).
    #[serde(default)]
    pub upstream_differs: Option<UpstreamDiffers>,
    /// Not run through a real API server (switchyard's `+apiserver` columns
    /// and upstream kube-proxy's), with the reason: what the scenario sets
    /// up, the API cannot (for example creation times a second apart).
    /// Reported unsupported there, with the reason.
    #[serde(default)]
    pub file_source_only: Option<String>,
}

/// A parsed, validated scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub path: PathBuf,
    pub requires: BTreeSet<Capability>,
    pub config: ScenarioConfig,
    pub objects: ObjectStore,
    pub steps: Vec<StepEntry>,
    /// See [`ScenarioFile::upstream_differs`].
    pub upstream_differs: Option<UpstreamDiffers>,
    /// See [`ScenarioFile::file_source_only`].
    pub file_source_only: Option<String>,
}

/// Why upstream kube-proxy differs on a scenario: one reason for all of its
/// modes, or a reason per mode (`{nftables: ...}`) where only some differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UpstreamDiffers {
    Every(String),
    PerMode(BTreeMap<String, String>),
}

impl UpstreamDiffers {
    /// The documented reason for upstream kube-proxy in `mode`
    /// (`iptables`, `nftables`, `ipvs`), if that mode differs.
    pub fn reason_for(&self, mode: &str) -> Option<&str> {
        match self {
            UpstreamDiffers::Every(reason) => Some(reason),
            UpstreamDiffers::PerMode(modes) => modes.get(mode).map(String::as_str),
        }
    }
}

/// The kinds of object a scenario may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "Service" => Some(Kind::Service),
            "EndpointSlice" => Some(Kind::EndpointSlice),
            "Node" => Some(Kind::Node),
            _ => None,
        }
    }
}

/// `(kind, namespace, name)` of an object; the namespace is empty for Nodes.
pub type ObjectKey = (Kind, String, String);

/// The current objects of a scenario run, kept as JSON values and converted
/// to k8s-openapi types when events are made.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectStore {
    objects: BTreeMap<ObjectKey, Value>,
}

/// Reads kind, namespace and name of an object; checks it converts to its k8s-openapi type.
pub fn object_key(obj: &Value) -> std::result::Result<ObjectKey, String> {
    let kind_str = obj.get("kind").and_then(Value::as_str).ok_or("object without kind")?;
    let kind = Kind::parse(kind_str).ok_or_else(|| format!("unsupported kind {kind_str:?}"))?;
    let meta = obj.get("metadata").ok_or_else(|| format!("{kind_str} without metadata"))?;
    let name = meta.get("name").and_then(Value::as_str).ok_or_else(|| format!("{kind_str} without metadata.name"))?;
    let namespace = match kind {
        Kind::Node => String::new(),
        _ => meta.get("namespace").and_then(Value::as_str).unwrap_or("default").to_string(),
    };
    let check = match kind {
        Kind::Service => serde_json::from_value::<Service>(obj.clone()).map(|_| ()),
        Kind::EndpointSlice => serde_json::from_value::<EndpointSlice>(obj.clone()).map(|_| ()),
        Kind::Node => serde_json::from_value::<Node>(obj.clone()).map(|_| ()),
    };
    check.map_err(|e| format!("{kind_str} {name}: {e}"))?;
    Ok((kind, namespace, name.to_string()))
}

/// Fills `metadata.namespace` with `default` where a namespaced object has none.
fn with_namespace(mut obj: Value) -> Value {
    let namespaced = obj.get("kind").and_then(Value::as_str) != Some("Node");
    if namespaced
        && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        && !meta.contains_key("namespace")
    {
        meta.insert("namespace".into(), Value::String("default".into()));
    }
    obj
}

impl ObjectStore {
    pub fn insert(&mut self, obj: Value) -> std::result::Result<ObjectKey, String> {
        let obj = with_namespace(obj);
        let key = object_key(&obj)?;
        self.objects.insert(key.clone(), obj);
        Ok(key)
    }

    pub fn remove(&mut self, key: &ObjectKey) -> Option<Value> {
        self.objects.remove(key)
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &Value)> {
        self.objects.iter()
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Value> {
        self.objects.iter().filter(move |(k, _)| k.0 == kind).map(|(_, v)| v)
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        let v = self.objects.get(&(Kind::Service, namespace.to_string(), name.to_string()))?;
        serde_json::from_value(v.clone()).ok()
    }

    pub fn has_node(&self) -> bool {
        self.objects.keys().any(|k| k.0 == Kind::Node)
    }

    /// The events of a complete initial list of these objects.
    pub fn initial_events(&self) -> Vec<ProxyEvent> {
        let services = self.of_kind(Kind::Service).filter_map(|v| serde_json::from_value(v.clone()).ok()).collect();
        let slices = self.of_kind(Kind::EndpointSlice).filter_map(|v| serde_json::from_value(v.clone()).ok()).collect();
        let node = self.of_kind(Kind::Node).find_map(|v| serde_json::from_value(v.clone()).ok());
        proxy_core::testing::initial_list(services, slices, node)
    }

    /// Every object as a multi-document YAML stream (for the file source).
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for v in self.objects.values() {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(v).unwrap_or_default());
        }
        out
    }
}

/// The event for applying or deleting one object.
pub fn event_for(obj: &Value, delete: bool) -> Option<ProxyEvent> {
    let kind = obj.get("kind").and_then(Value::as_str).and_then(Kind::parse)?;
    fn ev<K>(k: K, delete: bool) -> ResourceEvent<K> {
        if delete { ResourceEvent::Delete(k) } else { ResourceEvent::Apply(k) }
    }
    Some(match kind {
        Kind::Service => ProxyEvent::Service(ev(serde_json::from_value(obj.clone()).ok()?, delete)),
        Kind::EndpointSlice => ProxyEvent::EndpointSlice(ev(serde_json::from_value(obj.clone()).ok()?, delete)),
        Kind::Node => ProxyEvent::Node(ev(serde_json::from_value(obj.clone()).ok()?, delete)),
    })
}

/// The Node object node1 gets when a scenario has none: its lab addresses.
pub fn default_node() -> Value {
    let n1 = addresses::host(addresses::NODE1);
    let (v4, v6) = n1.map(|h| (h.ip(false).to_string(), h.ip(true).to_string())).unwrap_or_default();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": addresses::NODE1},
        "status": {"addresses": [
            {"type": "InternalIP", "address": v4},
            {"type": "InternalIP", "address": v6},
            {"type": "ExternalIP", "address": addresses::NODE1_SECOND_V4.to_string()},
        ]}
    })
}

fn is_lab_host(name: &str) -> bool {
    addresses::host(name).is_some()
}

impl Scenario {
    /// Parses and validates a scenario file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Scenario> {
        let invalid = |message: String| ConformanceError::InvalidScenario { path: path.to_path_buf(), message };
        let file: ScenarioFile = serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut objects = ObjectStore::default();
        for (i, obj) in file.objects.iter().enumerate() {
            objects.insert(obj.clone()).map_err(|e| invalid(format!("objects[{i}]: {e}")))?;
        }
        if !objects.has_node() {
            objects.insert(default_node()).map_err(|e| invalid(format!("default Node: {e}")))?;
        }
        let mut steps = Vec::new();
        let mut held = BTreeSet::new();
        // Objects as they will be at each step, so churn can name slices added later.
        let mut later = objects.clone();
        for (i, spec) in file.steps.into_iter().enumerate() {
            let entry =
                validate_step(i, spec, &mut held, &mut later).map_err(|m| invalid(format!("steps[{i}]: {m}")))?;
            steps.push(entry);
        }
        if steps.is_empty() {
            return Err(invalid("no steps".into()));
        }
        if let Some(UpstreamDiffers::PerMode(modes)) = &file.upstream_differs {
            let unknown: Vec<&String> =
                modes.keys().filter(|m| !crate::kubeproxy::MODES.contains(&m.as_str())).collect();
            if !unknown.is_empty() || modes.is_empty() {
                return Err(invalid(format!(
                    "upstreamDiffers: {unknown:?} are not kube-proxy modes (expected some of {:?})",
                    crate::kubeproxy::MODES
                )));
            }
        }
        Ok(Scenario {
            name: file.name,
            description: file.description,
            path: path.to_path_buf(),
            requires: file.requires.into_iter().collect(),
            config: file.config,
            objects,
            steps,
            upstream_differs: file.upstream_differs,
            file_source_only: file.file_source_only,
        })
    }

    /// Reads one scenario file.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConformanceError::ReadScenario { path: path.to_path_buf(), source })?;
        Scenario::parse(&text, path)
    }

    /// Every `*.yaml` scenario in a directory, sorted by file name; names must be unique.
    pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>> {
        let read = |source| ConformanceError::ReadScenario { path: dir.to_path_buf(), source };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        paths.sort();
        let scenarios = paths.iter().map(|p| Scenario::load(p)).collect::<Result<Vec<_>>>()?;
        let mut seen = BTreeSet::new();
        for s in &scenarios {
            if !seen.insert(s.name.clone()) {
                return Err(ConformanceError::InvalidScenario {
                    path: s.path.clone(),
                    message: format!("duplicate scenario name {:?}", s.name),
                });
            }
        }
        Ok(scenarios)
    }

    /// The families the proxy serves in this scenario.
    pub fn families(&self) -> proxy_core::FamilySet {
        match &self.config.families {
            None => proxy_core::FamilySet::V4,
            Some(f) => proxy_core::FamilySet { ipv4: f.contains(&IpFamily::V4), ipv6: f.contains(&IpFamily::V6) },
        }
    }

    /// Whether any probe needs SCTP.
    pub fn uses_sctp(&self) -> bool {
        self.requires.contains(&Capability::Sctp) || self.echo_ports().sctp.iter().next().is_some()
    }

    /// Whether any part needs IPv6.
    pub fn uses_ipv6(&self) -> bool {
        self.families().ipv6
    }

    /// Every (protocol, port) an endpoint of this scenario listens on, over all steps.
    pub fn echo_ports(&self) -> EchoPorts {
        let mut ports = EchoPorts::default();
        let mut add = |obj: &Value| {
            if obj.get("kind").and_then(Value::as_str) != Some("EndpointSlice") {
                return;
            }
            for p in obj.get("ports").and_then(Value::as_array).into_iter().flatten() {
                let proto = match p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") {
                    "UDP" => Proto::Udp,
                    "SCTP" => Proto::Sctp,
                    _ => Proto::Tcp,
                };
                if let Some(port) = p.get("port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok()) {
                    ports.insert(proto, port);
                }
            }
        };
        for (_, obj) in self.objects.iter() {
            add(obj);
        }
        for s in &self.steps {
            if let Step::Update { update } = &s.step {
                update.apply.iter().for_each(&mut add);
            }
        }
        ports
    }
}

fn check_probe_hosts(from: &str) -> std::result::Result<(), String> {
    if is_lab_host(from) { Ok(()) } else { Err(format!("unknown lab host {from:?} in `from`")) }
}

fn check_expect(expect: &Expectation) -> std::result::Result<(), String> {
    if expect.verdict().is_none() {
        return Err("expect needs exactly one of endpoints, refused, dropped, notServed".into());
    }
    for h in expect.endpoints.iter().flatten() {
        if !is_lab_host(h) {
            return Err(format!("unknown lab host {h:?} in expect.endpoints"));
        }
    }
    if let Some(split) = expect.split
        && !(0.0..=1.0).contains(&split)
    {
        return Err(format!("split {split} is outside 0..1"));
    }
    if expect.endpoints.as_ref().is_some_and(|e| e.is_empty()) {
        return Err("expect.endpoints is empty (use refused or dropped)".into());
    }
    Ok(())
}

fn validate_step(
    i: usize,
    spec: StepSpec,
    held: &mut BTreeSet<String>,
    objects: &mut ObjectStore,
) -> std::result::Result<StepEntry, String> {
    let StepSpec { name, probe, update, churn, wait, hold, check, restart, affinity_expiry, expect, within } = spec;
    let actions = [
        probe.is_some(),
        update.is_some(),
        churn.is_some(),
        wait.is_some(),
        hold.is_some(),
        check.is_some(),
        restart.is_some(),
        affinity_expiry.is_some(),
    ];
    if actions.iter().filter(|a| **a).count() != 1 {
        return Err("a step has exactly one of probe, update, churn, wait, hold, check, restart, affinityExpiry".into());
    }
    let needs_expect = probe.is_some() || hold.is_some() || affinity_expiry.is_some();
    if needs_expect != expect.is_some() {
        return Err(if needs_expect {
            "this step needs `expect`".into()
        } else {
            "`expect` only goes with probe, hold and affinityExpiry".into()
        });
    }
    let expect_checked = || -> std::result::Result<Expectation, String> {
        let e = expect.clone().unwrap_or_default();
        check_expect(&e)?;
        Ok(e)
    };
    let step = if let Some(probe) = probe {
        check_probe_hosts(&probe.from)?;
        if probe.count == 0 {
            return Err("probe.count must be at least 1".into());
        }
        Step::Probe { probe, expect: expect_checked()? }
    } else if let Some(update) = update {
        for (j, obj) in update.apply.iter().enumerate() {
            objects.insert(obj.clone()).map_err(|e| format!("update.apply[{j}]: {e}"))?;
        }
        for d in &update.delete {
            let kind = Kind::parse(&d.kind).ok_or_else(|| format!("update.delete: unsupported kind {:?}", d.kind))?;
            objects.remove(&(kind, d.namespace.clone(), d.name.clone()));
        }
        Step::Update { update }
    } else if let Some(churn) = churn {
        let (ns, name) = churn.slice.split_once('/').ok_or("churn.slice is namespace/name")?;
        if objects.get(&(Kind::EndpointSlice, ns.into(), name.into())).is_none() {
            return Err(format!("churn.slice {:?} is not an EndpointSlice of the scenario", churn.slice));
        }
        if let Some(h) = churn.pool.iter().chain(&churn.final_hosts).find(|h| !is_lab_host(h)) {
            return Err(format!("unknown lab host {h:?} in churn"));
        }
        if churn.pool.is_empty() {
            return Err("churn.pool is empty".into());
        }
        Step::Churn { churn }
    } else if let Some(d) = wait {
        Step::Wait { duration: d.0 }
    } else if let Some(hold) = hold {
        check_probe_hosts(&hold.from)?;
        if !held.insert(hold.name.clone()) {
            return Err(format!("connection {:?} is held twice", hold.name));
        }
        Step::Hold { hold, expect: expect_checked()? }
    } else if let Some(name) = check {
        if !held.contains(&name) {
            return Err(format!("check of connection {name:?} that no earlier hold opened"));
        }
        Step::Check { name }
    } else if let Some(restart) = restart {
        if let Some(p) = &restart.probe_during {
            check_probe_hosts(&p.from)?;
        }
        Step::Restart { restart }
    } else if let Some(expiry) = affinity_expiry {
        check_probe_hosts(&expiry.from)?;
        Step::AffinityExpiry { expiry, expect: expect_checked()? }
    } else {
        return Err("empty step".into());
    };
    let label = name.unwrap_or_else(|| format!("{} #{i}", step.kind()));
    Ok(StepEntry { label, step, within: within.map(|d| d.0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: clusterip-basic
description: a ClusterIP Service with two endpoints
requires: [ClusterIP, Tcp]
objects:
  - apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      clusterIP: 10.96.0.10
      clusterIPs: [10.96.0.10]
      ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
    addressType: IPv4
    ports: [{name: http, port: 8080, protocol: TCP}]
    endpoints:
      - addresses: [10.244.1.10]
        nodeName: node1
      - addresses: [10.244.2.10]
        nodeName: node2
steps:
  - probe: {from: client1, to: {service: web, via: clusterIP}, count: 30}
    expect: {endpoints: [a1, b1], split: 0.3, source: preserved}
  - update:
      delete: [{kind: EndpointSlice, name: web-1}]
    within: 5s
  - probe: {from: client1, to: "10.96.0.10:80", count: 2}
    expect: {refused: true}
"#;

    fn parse(text: &str) -> Result<Scenario> {
        Scenario::parse(text, Path::new("test.yaml"))
    }

    #[test]
    fn parses_a_complete_scenario() {
        let s = parse(GOOD).expect("valid scenario");
        assert_eq!(s.name, "clusterip-basic");
        assert!(s.requires.contains(&Capability::ClusterIP));
        assert_eq!(s.steps.len(), 3);
        assert!(s.objects.has_node(), "a default Node is added");
        let Step::Probe { probe, expect } = &s.steps[0].step else { panic!("first step is a probe") };
        assert_eq!(probe.count, 30);
        assert_eq!(expect.verdict(), Some(ExpectedVerdict::Forward));
        assert_eq!(expect.source, Some(SourceExpect::Preserved));
        assert!(matches!(&probe.to, Target::Service(t) if t.via == Via::ClusterIP && t.namespace == "default"));
        assert_eq!(s.steps[1].within, Some(Duration::from_secs(5)));
        let Step::Probe { probe, .. } = &s.steps[2].step else { panic!("third step is a probe") };
        assert_eq!(probe.to, Target::Literal("10.96.0.10:80".parse().expect("addr")));
        assert_eq!(s.echo_ports().tcp.into_iter().collect::<Vec<_>>(), vec![8080]);
        assert_eq!(s.objects.initial_events().len(), 9);
    }

    #[test]
    fn rejects_bad_scenarios() {
        let cases = [
            (GOOD.replace("[a1, b1]", "[a1, nobody]"), "unknown lab host"),
            (GOOD.replace("from: client1, to: {service", "from: mars, to: {service"), "unknown lab host"),
            (GOOD.replace("expect: {refused: true}", "expect: {refused: true, dropped: true}"), "exactly one"),
            (GOOD.replace("count: 30", "count: 30, bogus: 1"), "bogus"),
            (GOOD.replace("kind: Service\n", "kind: Pod\n"), "unsupported kind"),
            (GOOD.replace("within: 5s", "within: soon"), "duration"),
            (GOOD.replace("port: 80,", "port: eighty,"), "Service web"),
            (GOOD.replacen("objects:", "upstreamDiffers: {nftable: typo}\nobjects:", 1), "not kube-proxy modes"),
        ];
        for (text, needle) in cases {
            let err = parse(&text).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn upstream_differences_name_every_mode_or_some() {
        let every = parse(&GOOD.replacen("objects:", "upstreamDiffers: why\nobjects:", 1)).expect("valid");
        let every = every.upstream_differs.expect("read");
        assert_eq!((every.reason_for("iptables"), every.reason_for("ipvs")), (Some("why"), Some("why")));
        let some = parse(&GOOD.replacen("objects:", "upstreamDiffers: {nftables: why}\nobjects:", 1)).expect("valid");
        let some = some.upstream_differs.expect("read");
        assert_eq!((some.reason_for("nftables"), some.reason_for("iptables")), (Some("why"), None));
    }

    #[test]
    fn steps_need_exactly_one_action_and_matching_expect() {
        let base = GOOD.split("steps:").next().unwrap_or_default().to_string();
        let two = format!("{base}steps:\n  - wait: 1s\n    check: c\n");
        assert!(parse(&two).is_err());
        let stray = format!("{base}steps:\n  - wait: 1s\n    expect: {{refused: true}}\n");
        assert!(parse(&stray).is_err());
        let unheld = format!("{base}steps:\n  - check: c\n");
        assert!(parse(&unheld).expect_err("unheld").to_string().contains("no earlier hold"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), None, "a unit is needed, as in Go");
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("fast"), None);
    }

    #[test]
    fn the_yaml_stream_round_trips() {
        let s = parse(GOOD).expect("valid");
        let yaml = s.objects.to_yaml();
        assert_eq!(yaml.matches("---").count(), 3);
        assert!(yaml.contains("10.96.0.10"));
    }
}
