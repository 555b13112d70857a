//! Configuration: defaults < the `--config` file < `SWITCHYARD_*` environment < flags.
//!
//! The file is either a kube-proxy `KubeProxyConfiguration`
//! (`kubeproxy.config.k8s.io/v1alpha1`, so an operator can point switchyard
//! at the ConfigMap kube-proxy already used) or our own format, which is the
//! same schema plus a few switchyard fields. Every field of kube-proxy's
//! v1alpha1 is either honoured with kube-proxy's meaning (its defaults, its
//! validation and reasons) or accepted with a warning saying why it has no
//! effect here; `docs/compatibility.md` lists them all.
//!
//! How it is read:
//! 1. figment merges the layers into one value ([`load`]);
//! 2. serde derive decodes it into [`file::Document`], collecting every
//!    type error with its path and every unknown field ([`decode`]);
//! 3. [`resolve`] applies kube-proxy's defaulting and validation, collecting
//!    every problem, and builds the [`Config`];
//! 4. the chosen backend validates its own section.
//!
//! An unknown field is an error, except in a kube-proxy
//! `KubeProxyConfiguration`, where (as kube-proxy's lenient decoding does)
//! it is a warning.
//!
//! Backend sections (`iptables:`, `ipvs:`, `ebpf:`, or a plugin's mode name)
//! are handed to the backend as [`Config::section`], minus the generic keys
//! the daemon itself consumes (`syncPeriod`, `minSyncPeriod`, `masqueradeAll`).

pub mod decode;
pub mod file;
pub mod resolve;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Format, Serialized};
use figment::{Figment, Metadata, Profile, Provider};
use ipnet::IpNet;
#[cfg(test)]
use proxy_core::IpFamily;
use proxy_core::{FamilySet, NodePortAddresses, Registry};
use serde::Serialize;
use serde_json::{Map, Value};

pub use proxy_core::duration::{format_duration, parse_duration};
pub use resolve::parse_bind_address;

use crate::yaml::Yaml;

/// kube-proxy's API group/version for its configuration file.
pub const KUBE_PROXY_API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KUBE_PROXY_KIND: &str = "KubeProxyConfiguration";
/// Our own format's API group/version.
pub const API_VERSION: &str = "switchyard.io/v1alpha1";
pub const KIND: &str = "ProxyConfiguration";

pub const DEFAULT_MODE: &str = "iptables";
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 10256);
pub const DEFAULT_METRICS_BIND_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10249);
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);
/// How often the file source looks for changes.
pub const DEFAULT_FILE_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Environment variables with this prefix are a configuration layer.
pub const ENV_PREFIX: &str = "SWITCHYARD_";

/// Where Services and EndpointSlices come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum SourceSpec {
    /// The Kubernetes API server (kubeconfig, `--master`, or in-cluster).
    Kube,
    /// Kubernetes manifests on disk: a YAML file or a directory of them.
    File(PathBuf),
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Kube => f.write_str("kube"),
            SourceSpec::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl SourceSpec {
    /// Parses `kube` or `file:PATH`.
    pub fn parse(raw: &str) -> Result<SourceSpec, String> {
        match raw {
            "" | "kube" => Ok(SourceSpec::Kube),
            _ => match raw.strip_prefix("file:") {
                Some("") => Err("file: needs a path (file:PATH)".into()),
                Some(path) => Ok(SourceSpec::File(PathBuf::from(path))),
                None => Err(format!("{raw:?} is not a source (expected kube or file:PATH)")),
            },
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Which flavour the configuration file was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub enum FileFlavour {
    /// No file, or a file without apiVersion/kind.
    #[default]
    Plain,
    KubeProxy,
    Switchyard,
}

/// How pod traffic is told apart from other traffic (`detectLocalMode`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Default)]
pub enum LocalDetection {
    /// Sources in `clusterCIDR` are pods ([`Config::cluster_cidrs`]; empty: off).
    #[default]
    ClusterCidr,
    /// Sources in this Node's `spec.podCIDRs` are pods (read at start).
    NodeCidr,
    /// kube-proxy's interface-based modes; switchyard refuses to start with them.
    BridgeInterface(String),
    InterfaceNamePrefix(String),
}

/// `nodePortAddresses`: CIDRs and kube-proxy's keywords, resolved once the
/// node's IPs are known ([`NodePortSpec::resolve`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodePortSpec {
    /// `all`: every local address (0.0.0.0/0 and ::/0).
    pub all: bool,
    /// `primary`: the Node's primary IPv4 and/or IPv6 address.
    pub primary: bool,
    /// `localhost`: 127.0.0.0/8 and ::1/128.
    pub localhost: bool,
    pub cidrs: Vec<IpNet>,
}

impl NodePortSpec {
    /// Only the node's primary addresses (kube-proxy's `--nodeport-addresses primary`).
    pub fn primary() -> NodePortSpec {
        NodePortSpec { primary: true, ..NodePortSpec::default() }
    }

    /// What the backends receive. Nothing given means every address (kube-proxy's
    /// iptables and ipvs default); `primary` alone follows the node's addresses;
    /// combined with CIDRs, the primary addresses become host CIDRs.
    pub fn resolve(&self, node_ips: &[IpAddr]) -> NodePortAddresses {
        let nothing = !self.all && !self.primary && !self.localhost && self.cidrs.is_empty();
        if self.all || nothing {
            return NodePortAddresses::All;
        }
        if self.primary && !self.localhost && self.cidrs.is_empty() {
            return NodePortAddresses::Primary;
        }
        let mut cidrs = self.cidrs.clone();
        if self.localhost {
            cidrs.extend(["127.0.0.0/8", "::1/128"].iter().filter_map(|s| s.parse::<IpNet>().ok()));
        }
        if self.primary {
            cidrs.extend(node_ips.iter().map(|ip| IpNet::from(*ip)));
        }
        NodePortAddresses::Cidrs(cidrs)
    }
}

/// kube-proxy's conntrack settings (`conntrack:`), applied at start by
/// [`crate::conntrack`]. A zero timeout or `maxPerCore` leaves the kernel's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackConfig {
    pub max_per_core: u32,
    pub min: u32,
    pub tcp_established_timeout: Duration,
    pub tcp_close_wait_timeout: Duration,
    pub tcp_be_liberal: bool,
    pub udp_timeout: Duration,
    pub udp_stream_timeout: Duration,
}

impl ConntrackConfig {
    /// Nothing set: every value left as the kernel has it.
    pub fn leave_as_is() -> ConntrackConfig {
        ConntrackConfig {
            max_per_core: 0,
            min: 0,
            tcp_established_timeout: Duration::ZERO,
            tcp_close_wait_timeout: Duration::ZERO,
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

/// The API client's settings from `clientConnection`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientSettings {
    /// Requests per second (a token bucket refilled at this rate).
    pub qps: f64,
    /// Requests allowed in a burst.
    pub burst: u32,
}

/// A setting that was accepted but has no effect (or a differing one) in switchyard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigWarning {
    pub path: String,
    pub message: String,
    pub origin: Option<String>,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(o) = &self.origin {
            write!(f, " (from {o})")?;
        }
        Ok(())
    }
}

/// The validated configuration.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub flavour: FileFlavour,
    /// `--proxy-mode` (blank means iptables).
    pub mode: String,
    /// Why this configuration cannot run in this build although kube-proxy
    /// accepts it (`mode: nftables`, an interface-based `detectLocalMode`):
    /// the daemon stops with exit code 3 and this reason.
    pub unavailable: Option<String>,
    /// `--hostname-override` (trimmed and lowercased, as kube-proxy does).
    pub hostname_override: Option<String>,
    /// `--bind-address`: overrides the node's primary IP.
    pub bind_address: Option<IpAddr>,
    /// `None`: the server is off (`--healthz-port 0`).
    pub healthz_bind_address: Option<SocketAddr>,
    pub metrics_bind_address: Option<SocketAddr>,
    pub bind_address_hard_fail: bool,
    pub local_detection: LocalDetection,
    /// `--cluster-cidr`, with `detectLocalMode: ClusterCIDR`: sources inside are pod traffic.
    pub cluster_cidrs: Vec<IpNet>,
    pub node_port_addresses: NodePortSpec,
    pub masquerade_all: bool,
    pub sync_period: Duration,
    pub min_sync_period: Duration,
    pub service_proxy_name: Option<String>,
    /// `--kubeconfig` / `clientConnection.kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--master`: the API server URL, overriding the kubeconfig's.
    pub master: Option<String>,
    pub client: ClientSettings,
    pub source: SourceSpec,
    /// IP families to program; `None`: from the node's addresses.
    pub ip_families: Option<FamilySet>,
    /// Program this network namespace instead of the process's own (labs, tests).
    pub netns: Option<PathBuf>,
    pub log_format: LogFormat,
    /// `-v`: 0-1 info, 2-3 our debug lines (one per sync), 4-5 debug, 6+ trace.
    pub verbosity: u8,
    /// Backend sections by mode name, generic keys removed.
    pub sections: BTreeMap<String, Value>,
    /// Settings accepted with no effect (or a different one), each logged once at start.
    pub warnings: Vec<ConfigWarning>,
    pub file_poll_interval: Duration,
    /// `--enable-debug-handlers` / `enableDebugHandlers`: serve `/configz`,
    /// `/debug/state`, `/loglevel`, `/debug/flags/v` and `/debug/barrier` on
    /// the metrics port. Off by default (see [`crate::admin`] for why).
    pub enable_debug_handlers: bool,
    /// `--remove-kube-proxy-leftovers` / `removeKubeProxyLeftovers`: remove
    /// upstream kube-proxy's leftovers after the first sync (see
    /// [`crate::kube_proxy_leftovers`]). Off by default: `--cleanup` does it
    /// on demand.
    pub remove_kube_proxy_leftovers: bool,
    pub conntrack: ConntrackConfig,
    /// `oomScoreAdj`, written to `/proc/self/oom_score_adj` at start.
    pub oom_score_adj: i32,
    /// The effective configuration as kube-proxy's v1alpha1 document
    /// (what `--write-config-to` writes and `/configz` serves).
    pub kube_proxy: Value,
}

impl Config {
    /// The chosen backend's section (`Null` when absent).
    pub fn section(&self, mode: &str) -> Value {
        self.sections.get(mode).cloned().unwrap_or(Value::Null)
    }

    /// Defaults only (what an empty file gives), for tests and tools.
    pub fn defaults() -> Config {
        Config {
            flavour: FileFlavour::Plain,
            mode: DEFAULT_MODE.into(),
            unavailable: None,
            hostname_override: None,
            bind_address: None,
            healthz_bind_address: Some(DEFAULT_HEALTHZ_BIND_ADDRESS),
            metrics_bind_address: Some(DEFAULT_METRICS_BIND_ADDRESS),
            bind_address_hard_fail: false,
            local_detection: LocalDetection::ClusterCidr,
            cluster_cidrs: Vec::new(),
            node_port_addresses: NodePortSpec::default(),
            masquerade_all: false,
            sync_period: DEFAULT_SYNC_PERIOD,
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
            service_proxy_name: None,
            kubeconfig: None,
            master: None,
            client: ClientSettings { qps: resolve::DEFAULT_QPS, burst: resolve::DEFAULT_BURST as u32 },
            source: SourceSpec::Kube,
            ip_families: None,
            netns: None,
            log_format: LogFormat::Text,
            verbosity: 0,
            sections: BTreeMap::new(),
            warnings: Vec::new(),
            file_poll_interval: DEFAULT_FILE_POLL_INTERVAL,
            enable_debug_handlers: false,
            remove_kube_proxy_leftovers: false,
            conntrack: ConntrackConfig::leave_as_is(),
            oom_score_adj: resolve::DEFAULT_OOM_SCORE_ADJ,
            kube_proxy: Value::Null,
        }
    }
}

/// One problem, with its path and the layer it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path, e.g. `iptables.syncPeriod` or `nodePortAddresses[1]`.
    pub path: String,
    pub message: String,
    /// `config file /etc/x.yaml`, `environment`, `command line`.
    pub origin: Option<String>,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        if let Some(o) = &self.origin {
            write!(f, " (from {o})")?;
        }
        Ok(())
    }
}

/// Every problem found in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "invalid configuration ({n} problem{}):", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(path: &str, message: impl Into<String>, origin: Option<String>) -> ConfigError {
        ConfigError { problems: vec![ConfigProblem { path: path.into(), message: message.into(), origin }] }
    }
}

/// The layers to merge.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    /// `--config`.
    pub file: Option<PathBuf>,
    /// `SWITCHYARD_*` variables; `None` reads the process environment.
    pub env: Option<Vec<(String, String)>>,
    /// Values given as flags, under their configuration keys.
    pub flags: Map<String, Value>,
}

/// A layer of values (environment, flags) with a name for error messages.
struct NamedLayer(&'static str, Map<String, Value>);

impl Provider for NamedLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.0)
    }

    fn data(&self) -> Result<figment::value::Map<Profile, figment::value::Dict>, figment::Error> {
        Serialized::defaults(Value::Object(self.1.clone())).data()
    }
}

/// Turns `SWITCHYARD_IPTABLES__MASQUERADE_BIT` (after the prefix, lowercased)
/// into `iptables.masqueradeBit`: `__` nests, `_` separates camelCase words,
/// and kube-proxy's acronyms keep their spelling (`clusterCIDR`, `strictARP`).
pub fn env_key(raw: &str) -> String {
    raw.split("__").map(snake_to_camel).collect::<Vec<_>>().join(".")
}

fn snake_to_camel(segment: &str) -> String {
    let mut out = String::new();
    for (i, word) in segment.split('_').filter(|w| !w.is_empty()).enumerate() {
        let word = word.to_ascii_lowercase();
        if i == 0 {
            out.push_str(&word);
            continue;
        }
        match word.as_str() {
            "cidr" => out.push_str("CIDR"),
            "cidrs" => out.push_str("CIDRs"),
            "arp" => out.push_str("ARP"),
            "ip" => out.push_str("IP"),
            "ips" => out.push_str("IPs"),
            "dsr" => out.push_str("DSR"),
            _ => {
                let mut chars = word.chars();
                if let Some(c) = chars.next() {
                    out.push(c.to_ascii_uppercase());
                    out.extend(chars);
                }
            }
        }
    }
    out
}

/// Top-level keys of the document (besides backend sections named after modes).
const TOP_LEVEL_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "featureGates",
    "clientConnection",
    "logging",
    "hostnameOverride",
    "bindAddress",
    "healthzBindAddress",
    "metricsBindAddress",
    "bindAddressHardFail",
    "enableProfiling",
    "showHiddenMetricsForVersion",
    "mode",
    "iptables",
    "ipvs",
    "nftables",
    "winkernel",
    "detectLocalMode",
    "detectLocal",
    "clusterCIDR",
    "nodePortAddresses",
    "oomScoreAdj",
    "conntrack",
    "configSyncPeriod",
    "portRange",
    "windowsRunAsService",
    // switchyard's own
    "syncPeriod",
    "minSyncPeriod",
    "masqueradeAll",
    "master",
    "source",
    "ipFamilies",
    "netns",
    "filePollInterval",
    "enableDebugHandlers",
    "serviceProxyName",
    "removeKubeProxyLeftovers",
];

/// Loads, merges and validates the configuration.
pub fn load(layers: &Layers, registry: &Registry) -> Result<Config, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = &layers.file {
        if let Err(e) = std::fs::metadata(path) {
            return Err(ConfigError::one("", format!("config file {}: {e}", path.display()), None));
        }
        figment = figment.merge(Yaml::file_exact(path));
    }
    load_layers(figment, layers, registry)
}

/// [`load`] with the configuration file's text instead of its path (and no
/// environment, no flags): what the file layer alone gives. The fuzzer's
/// entry point, and handy for tools that hold the text already.
pub fn load_yaml_str(text: &str, registry: &Registry) -> Result<Config, ConfigError> {
    let layers = Layers { file: None, env: Some(Vec::new()), flags: Map::new() };
    load_layers(Figment::new().merge(Yaml::string(text)), &layers, registry)
}

/// Merges the environment and flags over `figment` (holding the file layer, if any) and validates.
fn load_layers(mut figment: Figment, layers: &Layers, registry: &Registry) -> Result<Config, ConfigError> {
    let modes = registry.modes();
    let env_pairs: Vec<(String, String)> = match &layers.env {
        Some(pairs) => pairs.clone(),
        None => std::env::vars().collect(),
    };
    let mut env_map = Map::new();
    for (name, value) in env_pairs {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        let key = env_key(rest);
        let top = key.split('.').next().unwrap_or_default();
        // Other tools share the prefix (test helpers, the conformance runner):
        // only variables naming a configuration key are a layer.
        if !TOP_LEVEL_KEYS.contains(&top) && !modes.iter().any(|m| m == top) {
            tracing::debug!(variable = %name, "ignoring environment variable that names no configuration key");
            continue;
        }
        let parsed: figment::value::Value = value.parse().unwrap_or_else(|_| value.clone().into());
        let json: Value = parsed.deserialize().unwrap_or(Value::String(value));
        insert_path(&mut env_map, &key, json);
    }
    if !env_map.is_empty() {
        figment = figment.merge(NamedLayer("environment", env_map));
    }
    figment = figment.merge(NamedLayer("command line", layers.flags.clone()));

    let merged: Value = match figment.extract::<Value>() {
        Ok(v) => v,
        Err(e) => {
            let origin = e.metadata.as_ref().map(describe_metadata);
            let message = e.kind.to_string();
            return Err(ConfigError::one(&e.path.join("."), message, origin));
        }
    };
    let origin = |path: &str| origin_of(&figment, layers, path);
    let (cfg, warnings) = read(merged, registry, &origin)?;
    let mut cfg = cfg;
    // kube-proxy ignores most flags when --config is given; switchyard applies
    // them, so that its own choices (the mode) can sit beside kube-proxy's file.
    if layers.file.is_some() && cfg.flavour == FileFlavour::KubeProxy {
        for key in layers.flags.keys().filter(|k| !FLAGS_KUBE_PROXY_KEEPS_WITH_CONFIG.contains(&k.as_str())) {
            if TOP_LEVEL_KEYS.contains(&key.as_str()) && !resolve::OWN_KEYS.contains(&key.as_str()) {
                cfg.warnings.push(ConfigWarning {
                    path: key.clone(),
                    message: "the flag overrides the config file (kube-proxy would ignore this flag because --config is given)"
                        .into(),
                    origin: Some("command line".into()),
                });
            }
        }
    }
    cfg.warnings.splice(0..0, warnings);
    Ok(cfg)
}

/// Configuration keys whose flags kube-proxy applies even with `--config`.
const FLAGS_KUBE_PROXY_KEEPS_WITH_CONFIG: &[&str] = &["hostnameOverride", "logging", "master"];

fn describe_metadata(md: &Metadata) -> String {
    match &md.source {
        Some(figment::Source::File(p)) => format!("config file {}", p.display()),
        _ => md.name.to_string(),
    }
}

/// Which layer a value at `path` came from: the last layer (flags, then
/// environment, then file) that has a value there.
fn origin_of(figment: &Figment, layers: &Layers, path: &str) -> Option<String> {
    let key = path.split('[').next().unwrap_or(path);
    if has_path(&layers.flags, key) {
        return Some("command line".into());
    }
    figment.find_metadata(key).map(describe_metadata)
}

fn has_path(map: &Map<String, Value>, path: &str) -> bool {
    let mut parts = path.split('.');
    let Some(first) = parts.next() else { return false };
    let mut cur = match map.get(first) {
        Some(v) => v,
        None => return false,
    };
    for p in parts {
        cur = match cur.get(p) {
            Some(v) => v,
            None => return false,
        };
    }
    true
}

/// Sets `a.b.c` in a JSON object, creating intermediate objects.
pub fn insert_path(map: &mut Map<String, Value>, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut cur = map;
    for p in parts {
        let entry = cur.entry(p.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        cur = next;
    }
    cur.insert(last.to_string(), value);
}

/// Reads a merged configuration value, collecting every problem; on
/// success also the warnings about unknown fields (kube-proxy flavour).
pub fn read(
    merged: Value,
    registry: &Registry,
    origin: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
    let merged = if merged.is_null() { Value::Object(Map::new()) } else { merged };
    let mut c = resolve::Collector { problems: Vec::new(), warnings: Vec::new(), origin };
    if !merged.is_object() {
        c.problem("", "expected a mapping at the top level");
        return Err(ConfigError { problems: c.problems });
    }
    let decoded: decode::Decoded<file::Document> = decode::decode(&merged);
    for (path, message) in &decoded.errors {
        c.problem(path, message.clone());
    }
    let doc = &decoded.value;

    let flavour = match (doc.api_version.as_ref().map(|t| t.0.as_str()), doc.kind.as_ref().map(|t| t.0.as_str())) {
        (None, None) => FileFlavour::Plain,
        (Some(KUBE_PROXY_API_VERSION), Some(KUBE_PROXY_KIND)) => FileFlavour::KubeProxy,
        (Some(API_VERSION), Some(KIND)) => FileFlavour::Switchyard,
        (v, k) => {
            c.problem(
                "kind",
                format!(
                    "apiVersion {v:?} with kind {k:?} is not a configuration this proxy reads \
                     (expected {KUBE_PROXY_API_VERSION} {KUBE_PROXY_KIND}, or {API_VERSION} {KIND})"
                ),
            );
            FileFlavour::Plain
        }
    };

    let modes = registry.modes();
    let is_backend_section = |name: &str| modes.iter().any(|m| m == name);
    // Unknown fields: a backend's section is the backend's to judge.
    for path in &decoded.unknown {
        let top = path.split(['.', '[']).next().unwrap_or_default();
        if is_backend_section(top) {
            continue;
        }
        if flavour == FileFlavour::KubeProxy {
            c.warn(path, "unknown field, ignored (as kube-proxy's lenient decoding of v1alpha1 does)");
        } else {
            c.problem(path, "unknown field");
        }
    }

    let mut cfg = resolve::resolve(doc, &merged, flavour, registry, &mut c);

    // Backend sections: kube-proxy's, and every registered mode's.
    if let Value::Object(root) = &merged {
        for (name, value) in root {
            if !is_backend_section(name) {
                continue;
            }
            if !(value.is_object() || value.is_null()) {
                if !resolve::KUBE_PROXY_SECTIONS.contains(&name.as_str()) {
                    c.problem(name, "expected a mapping");
                }
                continue;
            }
            cfg.sections.insert(name.clone(), resolve::backend_section(value));
        }
    }
    // kube-proxy's ipvs mode takes its masquerade bit from `iptables:`.
    if cfg.mode == "ipvs" {
        let bit = merged.pointer("/ipvs/masqueradeBit").or_else(|| merged.pointer("/iptables/masqueradeBit"));
        if let Some(bit) = bit.filter(|b| !b.is_null()).cloned() {
            let section = cfg.sections.entry("ipvs".into()).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(s) = section {
                s.insert("masqueradeBit".into(), bit);
            }
        }
    }

    // The chosen backend validates its own section, unless the daemon already
    // found a problem there (the same value would be reported twice).
    let mode = cfg.mode.clone();
    let prefix = format!("{mode}.");
    let section_clean = !c.problems.iter().any(|p| p.path.starts_with(&prefix));
    if let Ok(factory) = registry.get(&mode)
        && section_clean
    {
        let mut section = cfg.section(&mode);
        // In kube-proxy's file, an unknown field of kube-proxy's own section
        // is a warning: drop it and ask again, a bounded number of times.
        for _ in 0..32 {
            let problems = factory.validate(&section);
            // The first unknown field of kube-proxy's own section, in kube-proxy's file.
            let lenient = flavour == FileFlavour::KubeProxy && resolve::KUBE_PROXY_SECTIONS.contains(&mode.as_str());
            let unknown = problems.iter().find_map(|p| unknown_field_name(p)).filter(|_| lenient);
            if let (Some(field), Value::Object(m)) = (unknown, &mut section)
                && m.remove(&field).is_some()
            {
                c.warn(
                    &format!("{mode}.{field}"),
                    "unknown field, ignored (as kube-proxy's lenient decoding of v1alpha1 does)",
                );
                continue;
            }
            for p in problems {
                let (path, message) = split_backend_problem(&mode, &p);
                c.problem(&path, message);
            }
            break;
        }
        cfg.sections.insert(mode.clone(), section);
    }

    if c.problems.is_empty() {
        let warnings = std::mem::take(&mut c.warnings);
        Ok((cfg, warnings))
    } else {
        Err(ConfigError { problems: c.problems })
    }
}

/// serde's `unknown field `x`, expected ...`: the field's name.
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

/// A factory's problem is free text that usually starts with its field;
/// prefix the section so the path is complete.
fn split_backend_problem(mode: &str, problem: &str) -> (String, String) {
    if let Some(field) = unknown_field_name(problem) {
        return (format!("{mode}.{field}"), "unknown field".to_string());
    }
    match problem.split_once(": ") {
        Some((field, msg)) if !field.contains(' ') => {
            let field = field.strip_prefix(&format!("{mode}.")).unwrap_or(field);
            if field == mode {
                (mode.to_string(), msg.to_string())
            } else {
                (format!("{mode}.{field}"), msg.to_string())
            }
        }
        _ => (mode.to_string(), problem.to_string()),
    }
}

/// The node's IP families for a list of addresses (both when empty: unknown).
pub fn families_of(ips: &[IpAddr]) -> FamilySet {
    let v4 = ips.iter().any(IpAddr::is_ipv4);
    let v6 = ips.iter().any(IpAddr::is_ipv6);
    match (v4, v6) {
        (false, true) => FamilySet::V6,
        (true, true) => FamilySet::DUAL,
        _ => FamilySet::V4,
    }
}

/// Keeps [`IpFamily`] in this module's vocabulary for the tests.
#[cfg(test)]
fn family(net: &IpNet) -> IpFamily {
    IpFamily::of(&net.addr())
}

#[cfg(test)]
mod tests;
