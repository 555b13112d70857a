//! Configuration: defaults < the `--config` file < `SWITCHYARD_*` environment < flags.
//!
//! The file is either a kube-proxy `KubeProxyConfiguration`
//! (`kubeproxy.config.k8s.io/v1alpha1`, so an operator can point switchyard
//! at the ConfigMap kube-proxy already used) or our own format, which is the
//! same schema plus a few switchyard fields: fields that mean the same keep
//! kube-proxy's names. As in kube-proxy, zero values (`""`, `0s`, `null`)
//! mean "use the default".
//!
//! The layers are merged by figment; the merged value is then read field by
//! field so that *every* problem (unknown field, wrong type, invalid value)
//! is reported with its path and the layer it came from, not only the first.
//!
//! Backend sections (`iptables:`, `ipvs:`, `ebpf:`, or a plugin's mode name)
//! are handed to the backend as [`Config::section`], minus the generic keys
//! the daemon itself consumes (`syncPeriod`, `minSyncPeriod`, `masqueradeAll`,
//! which kube-proxy spells inside those sections).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Format, Serialized};
use figment::{Figment, Metadata, Profile, Provider};
use ipnet::IpNet;
use proxy_core::{FamilySet, IpFamily, NodePortAddresses, Registry};
use serde::Serialize;
use serde_json::{Map, Value};

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

/// The validated configuration.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub flavour: FileFlavour,
    /// `--proxy-mode`.
    pub mode: String,
    /// `--hostname-override` (already lowercased as kube-proxy does).
    pub hostname_override: Option<String>,
    /// `--bind-address`: overrides the node's primary IP.
    pub bind_address: Option<IpAddr>,
    pub healthz_bind_address: SocketAddr,
    pub metrics_bind_address: SocketAddr,
    pub bind_address_hard_fail: bool,
    /// `--cluster-cidr`: sources inside are pod traffic.
    pub cluster_cidrs: Vec<IpNet>,
    pub node_port_addresses: NodePortAddresses,
    pub masquerade_all: bool,
    pub sync_period: Duration,
    pub min_sync_period: Duration,
    pub service_proxy_name: Option<String>,
    /// `--kubeconfig` / `clientConnection.kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--master`: the API server URL, overriding the kubeconfig's.
    pub master: Option<String>,
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
    /// kube-proxy settings that were given but have no effect in switchyard.
    pub ignored: Vec<String>,
    pub file_poll_interval: Duration,
    /// `--enable-debug-handlers` / `enableDebugHandlers`: serve `/configz`,
    /// `/debug/state`, `/loglevel`, `/debug/flags/v` and `/debug/barrier` on
    /// the metrics port. Off by default (see [`crate::admin`] for why).
    pub enable_debug_handlers: bool,
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
            hostname_override: None,
            bind_address: None,
            healthz_bind_address: DEFAULT_HEALTHZ_BIND_ADDRESS,
            metrics_bind_address: DEFAULT_METRICS_BIND_ADDRESS,
            bind_address_hard_fail: false,
            cluster_cidrs: Vec::new(),
            node_port_addresses: NodePortAddresses::All,
            masquerade_all: false,
            sync_period: DEFAULT_SYNC_PERIOD,
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
            service_proxy_name: None,
            kubeconfig: None,
            master: None,
            source: SourceSpec::Kube,
            ip_families: None,
            netns: None,
            log_format: LogFormat::Text,
            verbosity: 0,
            sections: BTreeMap::new(),
            ignored: Vec::new(),
            file_poll_interval: DEFAULT_FILE_POLL_INTERVAL,
            enable_debug_handlers: false,
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

/// Top-level keys we know (besides backend sections named after modes).
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
    "serviceProxyName",
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
];

/// kube-proxy's own mode sections: accepted even when no such backend is registered.
const KUBE_PROXY_SECTIONS: &[&str] = &["iptables", "ipvs", "nftables", "winkernel"];

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
    read(merged, registry, &origin)
}

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

/// Reads a merged configuration value, collecting every problem.
pub fn read(
    merged: Value,
    registry: &Registry,
    origin: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut r = Reader { problems: Vec::new(), origin };
    let mut cfg = Config::defaults();
    let mut root = match merged {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            r.problem("", format!("expected a mapping at the top level, found {}", kind_of(&other)));
            return Err(ConfigError { problems: r.problems });
        }
    };

    // apiVersion / kind
    let api_version = r.take(&mut root, "", "apiVersion", Reader::string);
    let kind = r.take(&mut root, "", "kind", Reader::string);
    cfg.flavour = match (api_version.as_deref(), kind.as_deref()) {
        (None, None) => FileFlavour::Plain,
        (Some(KUBE_PROXY_API_VERSION), Some(KUBE_PROXY_KIND)) => FileFlavour::KubeProxy,
        (Some(API_VERSION), Some(KIND)) => FileFlavour::Switchyard,
        (v, k) => {
            r.problem(
                "kind",
                format!(
                    "apiVersion {v:?} with kind {k:?} is not a configuration this proxy reads \
                     (expected {KUBE_PROXY_API_VERSION} {KUBE_PROXY_KIND}, or {API_VERSION} {KIND})"
                ),
            );
            FileFlavour::Plain
        }
    };

    if let Some(mode) = r.take(&mut root, "", "mode", Reader::string).filter(|m| !m.is_empty()) {
        cfg.mode = mode;
    }
    if registry.get(&cfg.mode).is_err() {
        r.problem("mode", format!("unknown proxy mode {:?}; known modes: {}", cfg.mode, registry.modes().join(", ")));
    }
    cfg.hostname_override =
        r.take(&mut root, "", "hostnameOverride", Reader::string).filter(|h| !h.is_empty()).map(|h| {
            // kube-proxy lowercases and trims the override.
            h.trim().to_lowercase()
        });
    cfg.bind_address = r.take(&mut root, "", "bindAddress", Reader::string).filter(|s| !s.is_empty()).and_then(|s| {
        match s.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => None,
            Ok(ip) => Some(ip),
            Err(_) => {
                r.problem("bindAddress", format!("{s:?} is not an IP address"));
                None
            }
        }
    });
    if let Some(a) = r.take(&mut root, "", "healthzBindAddress", Reader::bind_address).flatten() {
        cfg.healthz_bind_address = a;
    }
    if let Some(a) = r.take(&mut root, "", "metricsBindAddress", Reader::bind_address).flatten() {
        cfg.metrics_bind_address = a;
    }
    cfg.bind_address_hard_fail = r.take(&mut root, "", "bindAddressHardFail", Reader::bool).unwrap_or(false);
    if r.take(&mut root, "", "enableProfiling", Reader::bool) == Some(true) {
        cfg.ignored.push("enableProfiling".into());
    }
    if r.take(&mut root, "", "showHiddenMetricsForVersion", Reader::string).is_some_and(|s| !s.is_empty()) {
        cfg.ignored.push("showHiddenMetricsForVersion".into());
    }
    cfg.service_proxy_name = r.take(&mut root, "", "serviceProxyName", Reader::string).filter(|s| !s.is_empty());
    if let Some(gates) = r.take(&mut root, "", "featureGates", Reader::bool_map)
        && !gates.is_empty()
    {
        cfg.ignored.push(format!("featureGates ({})", gates.keys().cloned().collect::<Vec<_>>().join(", ")));
    }

    // clientConnection
    if let Some(mut cc) = r.take(&mut root, "", "clientConnection", Reader::object) {
        cfg.kubeconfig = r
            .take(&mut cc, "clientConnection", "kubeconfig", Reader::string)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let _ = r.take(&mut cc, "clientConnection", "acceptContentTypes", Reader::string);
        let _ = r.take(&mut cc, "clientConnection", "contentType", Reader::string);
        let _ = r.take(&mut cc, "clientConnection", "qps", Reader::number);
        let _ = r.take(&mut cc, "clientConnection", "burst", |r, p, v| r.int(p, v, 0, i64::from(i32::MAX)));
        r.finish(cc, "clientConnection");
    }
    cfg.master = r.take(&mut root, "", "master", Reader::string).filter(|s| !s.is_empty());

    // logging
    if let Some(mut lg) = r.take(&mut root, "", "logging", Reader::object) {
        if let Some(f) = r.take(&mut lg, "logging", "format", Reader::string) {
            match f.as_str() {
                "" | "text" => cfg.log_format = LogFormat::Text,
                "json" => cfg.log_format = LogFormat::Json,
                other => r.problem("logging.format", format!("{other:?} is not a log format (text or json)")),
            }
        }
        if let Some(v) = r.take(&mut lg, "logging", "verbosity", |r, p, v| r.int(p, v, 0, 10)) {
            cfg.verbosity = v as u8;
        }
        // component-base logging options we accept and do not use
        for key in ["flushFrequency", "vmodule", "options"] {
            let _ = r.take(&mut lg, "logging", key, |_, _, v| Some(v));
        }
        r.finish(lg, "logging");
    }

    // detectLocal
    if let Some(m) = r.take(&mut root, "", "detectLocalMode", Reader::string) {
        match m.as_str() {
            "" | "ClusterCIDR" => {}
            other => r.problem(
                "detectLocalMode",
                format!("{other:?} is not supported by switchyard (only ClusterCIDR, with clusterCIDR set)"),
            ),
        }
    }
    if let Some(mut dl) = r.take(&mut root, "", "detectLocal", Reader::object) {
        let _ = r.take(&mut dl, "detectLocal", "bridgeInterface", Reader::string);
        let _ = r.take(&mut dl, "detectLocal", "interfaceNamePrefix", Reader::string);
        r.finish(dl, "detectLocal");
    }
    if let Some(cidrs) = r.take(&mut root, "", "clusterCIDR", Reader::cidr_list) {
        cfg.cluster_cidrs = cidrs;
    }
    if let Some(list) = r.take(&mut root, "", "nodePortAddresses", Reader::string_list) {
        cfg.node_port_addresses = r.node_port_addresses(&list);
    }
    if r.take(&mut root, "", "oomScoreAdj", |r, p, v| r.int(p, v, -1000, 1000)).is_some() {
        cfg.ignored.push("oomScoreAdj".into());
    }
    if let Some(mut ct) = r.take(&mut root, "", "conntrack", Reader::object) {
        let mut set = Vec::new();
        for key in ["maxPerCore", "min"] {
            if r.take(&mut ct, "conntrack", key, |r, p, v| r.int(p, v, 0, i64::from(i32::MAX))).is_some_and(|n| n != 0)
            {
                set.push(key);
            }
        }
        for key in ["tcpEstablishedTimeout", "tcpCloseWaitTimeout", "udpTimeout", "udpStreamTimeout"] {
            if r.take(&mut ct, "conntrack", key, Reader::duration).is_some_and(|d| !d.is_zero()) {
                set.push(key);
            }
        }
        if r.take(&mut ct, "conntrack", "tcpBeLiberal", Reader::bool) == Some(true) {
            set.push("tcpBeLiberal");
        }
        r.finish(ct, "conntrack");
        if !set.is_empty() {
            cfg.ignored.push(format!("conntrack ({}; set conntrack sysctls on the node instead)", set.join(", ")));
        }
    }
    let _ = r.take(&mut root, "", "configSyncPeriod", Reader::duration);
    let _ = r.take(&mut root, "", "portRange", Reader::string);

    // switchyard's own
    let top_sync = r.take(&mut root, "", "syncPeriod", Reader::duration).filter(|d| !d.is_zero());
    let top_min_sync = r.take(&mut root, "", "minSyncPeriod", Reader::duration).filter(|d| !d.is_zero());
    let top_masq = r.take(&mut root, "", "masqueradeAll", Reader::bool).unwrap_or(false);
    if let Some(s) = r.take(&mut root, "", "source", Reader::string) {
        match SourceSpec::parse(&s) {
            Ok(spec) => cfg.source = spec,
            Err(e) => r.problem("source", e),
        }
    }
    if let Some(list) = r.take(&mut root, "", "ipFamilies", Reader::string_list) {
        let mut fams = FamilySet { ipv4: false, ipv6: false };
        for (i, f) in list.iter().enumerate() {
            match f.as_str() {
                "IPv4" => fams.ipv4 = true,
                "IPv6" => fams.ipv6 = true,
                other => r.problem(&format!("ipFamilies[{i}]"), format!("{other:?} is not IPv4 or IPv6")),
            }
        }
        if fams.ipv4 || fams.ipv6 {
            cfg.ip_families = Some(fams);
        }
    }
    cfg.netns = r
        .take(&mut root, "", "netns", Reader::string)
        .filter(|s| !s.is_empty())
        .map(|s| if s.contains('/') { PathBuf::from(s) } else { PathBuf::from("/run/netns").join(s) });
    if let Some(d) = r.take(&mut root, "", "filePollInterval", Reader::duration).filter(|d| !d.is_zero()) {
        cfg.file_poll_interval = d;
    }
    cfg.enable_debug_handlers = r.take(&mut root, "", "enableDebugHandlers", Reader::bool).unwrap_or(false);

    // Backend sections: kube-proxy's, and every registered mode's.
    let modes = registry.modes();
    let section_names: Vec<String> =
        root.keys().filter(|k| KUBE_PROXY_SECTIONS.contains(&k.as_str()) || modes.contains(k)).cloned().collect();
    let mut generic: BTreeMap<String, (Option<Duration>, Option<Duration>, bool)> = BTreeMap::new();
    for name in section_names {
        let Some(value) = root.remove(&name) else { continue };
        let mut section = match value {
            Value::Null => Map::new(),
            Value::Object(m) => m,
            other => {
                r.problem(&name, format!("expected a mapping, found {}", kind_of(&other)));
                continue;
            }
        };
        if name == "winkernel" {
            // Windows-only; accepted so that kube-proxy ConfigMaps load unchanged.
            continue;
        }
        let sync = r.take(&mut section, &name, "syncPeriod", Reader::duration).filter(|d| !d.is_zero());
        let min_sync = r.take(&mut section, &name, "minSyncPeriod", Reader::duration).filter(|d| !d.is_zero());
        let masq = r.take(&mut section, &name, "masqueradeAll", Reader::bool).unwrap_or(false);
        generic.insert(name.clone(), (sync, min_sync, masq));
        // kube-proxy writes unset fields as null (kubeadm's ConfigMap has
        // `masqueradeBit: null`): null means "the default", so backends
        // never see it.
        let mut section = Value::Object(section);
        strip_nulls(&mut section);
        cfg.sections.insert(name, section);
    }
    // Precedence: top level, then the chosen mode's section, then iptables'
    // (kube-proxy's ipvs mode, too, reads masqueradeAll from `iptables:`).
    let chosen = generic.get(&cfg.mode).cloned().unwrap_or_default();
    let ipt = generic.get("iptables").cloned().unwrap_or_default();
    cfg.sync_period = top_sync.or(chosen.0).or(ipt.0).unwrap_or(DEFAULT_SYNC_PERIOD);
    cfg.min_sync_period = top_min_sync.or(chosen.1).or(ipt.1).unwrap_or(DEFAULT_MIN_SYNC_PERIOD);
    cfg.masquerade_all = top_masq || chosen.2 || ipt.2;
    if cfg.min_sync_period > cfg.sync_period {
        r.problem(
            "minSyncPeriod",
            format!(
                "{} is longer than syncPeriod {}",
                format_duration(cfg.min_sync_period),
                format_duration(cfg.sync_period)
            ),
        );
    }
    r.finish(root, "");

    // The chosen backend validates its own section.
    if let Ok(factory) = registry.get(&cfg.mode) {
        let section = cfg.section(&cfg.mode);
        for p in factory.validate(&section) {
            let (path, message) = split_backend_problem(&cfg.mode, &p);
            r.problem(&path, message);
        }
    }

    if r.problems.is_empty() { Ok(cfg) } else { Err(ConfigError { problems: r.problems }) }
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, v| !v.is_null());
        m.values_mut().for_each(strip_nulls);
    }
}

/// A factory's problem is free text that usually starts with its field;
/// prefix the section so the path is complete.
fn split_backend_problem(mode: &str, problem: &str) -> (String, String) {
    match problem.split_once(": ") {
        Some((field, msg)) if !field.contains(' ') => {
            let field = field.strip_prefix(&format!("{mode}.")).unwrap_or(field);
            (format!("{mode}.{field}"), msg.to_string())
        }
        _ => (mode.to_string(), problem.to_string()),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

struct Reader<'a> {
    problems: Vec<ConfigProblem>,
    origin: &'a dyn Fn(&str) -> Option<String>,
}

impl Reader<'_> {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        let origin = (self.origin)(path);
        self.problems.push(ConfigProblem { path: path.to_string(), message: message.into(), origin });
    }

    /// Removes `key` from `map` and parses it; `None` when absent or invalid.
    fn take<T>(
        &mut self,
        map: &mut Map<String, Value>,
        parent: &str,
        key: &str,
        parse: impl FnOnce(&mut Self, &str, Value) -> Option<T>,
    ) -> Option<T> {
        let v = map.remove(key)?;
        let path = join(parent, key);
        parse(self, &path, v)
    }

    /// Every key left over is unknown.
    fn finish(&mut self, map: Map<String, Value>, parent: &str) {
        for key in map.keys() {
            self.problem(&join(parent, key), "unknown field");
        }
    }

    fn object(&mut self, path: &str, v: Value) -> Option<Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            Value::Null => Some(Map::new()),
            other => {
                self.problem(path, format!("expected a mapping, found {}", kind_of(&other)));
                None
            }
        }
    }

    fn string(&mut self, path: &str, v: Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s),
            Value::Null => None,
            // Environment values are typed by figment; a name may look like a number.
            Value::Number(n) => Some(n.to_string()),
            other => {
                self.problem(path, format!("expected a string, found {}", kind_of(&other)));
                None
            }
        }
    }

    fn bool(&mut self, path: &str, v: Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(b),
            Value::Null => None,
            Value::String(s) if s == "true" || s == "false" => Some(s == "true"),
            other => {
                self.problem(path, format!("expected true or false, found {}", kind_of(&other)));
                None
            }
        }
    }

    fn number(&mut self, path: &str, v: Value) -> Option<f64> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::Null => None,
            other => {
                self.problem(path, format!("expected a number, found {}", kind_of(&other)));
                None
            }
        }
    }

    fn int(&mut self, path: &str, v: Value, min: i64, max: i64) -> Option<i64> {
        let n = match &v {
            Value::Null => return None,
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.problem(path, format!("{n} is out of range {min}..{max}"));
                None
            }
            None => {
                self.problem(path, format!("expected an integer, found {}", kind_of(&v)));
                None
            }
        }
    }

    fn duration(&mut self, path: &str, v: Value) -> Option<Duration> {
        match v {
            Value::Null => None,
            Value::String(s) => match parse_duration(&s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.problem(path, e);
                    None
                }
            },
            Value::Number(n) if n.as_u64() == Some(0) => Some(Duration::ZERO),
            other => {
                self.problem(
                    path,
                    format!("expected a duration such as \"30s\" or \"1m0s\", found {}", kind_of(&other)),
                );
                None
            }
        }
    }

    /// `host:port`; `""` means the default (`None` inside).
    fn bind_address(&mut self, path: &str, v: Value) -> Option<Option<SocketAddr>> {
        let s = self.string(path, v)?;
        if s.is_empty() {
            return Some(None);
        }
        match parse_bind_address(&s) {
            Ok(a) => Some(Some(a)),
            Err(e) => {
                self.problem(path, e);
                None
            }
        }
    }

    fn bool_map(&mut self, path: &str, v: Value) -> Option<BTreeMap<String, bool>> {
        let m = self.object(path, v)?;
        let mut out = BTreeMap::new();
        for (k, v) in m {
            if let Some(b) = self.bool(&join(path, &k), v) {
                out.insert(k, b);
            }
        }
        Some(out)
    }

    /// A list of strings, or one comma-separated string (flags and environment).
    fn string_list(&mut self, path: &str, v: Value) -> Option<Vec<String>> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()),
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.into_iter().enumerate() {
                    if let Some(s) = self.string(&format!("{path}[{i}]"), item) {
                        out.push(s);
                    }
                }
                Some(out)
            }
            other => {
                self.problem(path, format!("expected a list of strings, found {}", kind_of(&other)));
                None
            }
        }
    }

    fn cidr_list(&mut self, path: &str, v: Value) -> Option<Vec<IpNet>> {
        let list = self.string_list(path, v)?;
        let mut out = Vec::new();
        let mut families = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match s.parse::<IpNet>() {
                Ok(net) => {
                    let fam = IpFamily::of(&net.addr());
                    if families.contains(&fam) {
                        self.problem(&format!("{path}[{i}]"), format!("a second {} CIDR ({s})", fam.as_str()));
                    }
                    families.push(fam);
                    out.push(net.trunc());
                }
                Err(_) => self.problem(&format!("{path}[{i}]"), format!("{s:?} is not a CIDR")),
            }
        }
        Some(out)
    }

    fn node_port_addresses(&mut self, list: &[String]) -> NodePortAddresses {
        if list.is_empty() {
            return NodePortAddresses::All;
        }
        if list.iter().any(|s| s == "primary") {
            if list.len() > 1 {
                self.problem("nodePortAddresses", "\"primary\" cannot be combined with CIDRs");
            }
            return NodePortAddresses::Primary;
        }
        let mut cidrs = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match s.parse::<IpNet>() {
                Ok(n) => cidrs.push(n.trunc()),
                Err(_) => {
                    self.problem(&format!("nodePortAddresses[{i}]"), format!("{s:?} is not a CIDR or \"primary\""))
                }
            }
        }
        NodePortAddresses::Cidrs(cidrs)
    }
}

/// `0.0.0.0:10256`, `[::]:10256`, `:10256` (every address).
pub fn parse_bind_address(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix(':') {
        return port
            .parse::<u16>()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p))
            .map_err(|_| format!("{s:?} is not an address:port"));
    }
    s.parse::<SocketAddr>().map_err(|_| format!("{s:?} is not an address:port such as 0.0.0.0:10256"))
}

/// Parses a Go duration (`30s`, `1m0s`, `1h2m3.5s`, `500ms`, `0`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (such as \"30s\", \"1m0s\" or \"500ms\")");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() || t.starts_with('-') {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    // `from_secs_f64` panics past about 584 billion years (found by the
    // `config` fuzz target's input `syncPeriod: 99999999999999999999999h`).
    Duration::try_from_secs_f64(total).map_err(|_| format!("{s:?} is too long a duration"))
}

/// Formats a duration the way Go does for whole units (`30s`, `1m0s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    let h = (secs / 3600.0).floor();
    let m = ((secs - h * 3600.0) / 60.0).floor();
    let s = secs - h * 3600.0 - m * 60.0;
    let s = if (s - s.round()).abs() < 1e-9 { format!("{}", s.round()) } else { format!("{s}") };
    match (h as u64, m as u64) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use proxy_core::{BackendContext, BackendFactory, Dataplane, DataplaneError};

    #[derive(Debug)]
    struct Fake(&'static str);

    #[async_trait::async_trait]
    impl BackendFactory for Fake {
        fn mode(&self) -> &str {
            self.0
        }
        fn description(&self) -> &str {
            "test"
        }
        fn validate(&self, section: &Value) -> Vec<String> {
            let mut out = Vec::new();
            if let Some(m) = section.as_object() {
                for k in m.keys() {
                    if k != "masqueradeBit" && k != "localhostNodePorts" && k != "scheduler" {
                        out.push(format!("{k}: unknown field"));
                    }
                }
            }
            out
        }
        async fn probe(&self, _ctx: &BackendContext) -> Result<(), DataplaneError> {
            Ok(())
        }
        async fn build(&self, _ctx: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError> {
            Err(DataplaneError::unavailable(self.0, "test"))
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register(Arc::new(Fake("iptables"))).unwrap();
        r.register(Arc::new(Fake("ipvs"))).unwrap();
        r
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn layers(file: Option<PathBuf>, env: &[(&str, &str)], flags: Value) -> Layers {
        Layers {
            file,
            env: Some(env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            flags: flags.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn defaults() {
        let c = load(&layers(None, &[], Value::Null), &registry()).unwrap();
        assert_eq!(c.mode, "iptables");
        assert_eq!(c.healthz_bind_address, "0.0.0.0:10256".parse().unwrap());
        assert_eq!(c.metrics_bind_address, "127.0.0.1:10249".parse().unwrap());
        assert_eq!(c.sync_period, Duration::from_secs(30));
        assert_eq!(c.min_sync_period, Duration::from_secs(1));
        assert_eq!(c.source, SourceSpec::Kube);
    }

    #[test]
    fn layers_in_order_file_env_flags() {
        let (_d, path) = file("mode: ipvs\nhostnameOverride: from-file\nclusterCIDR: 10.0.0.0/8\nsyncPeriod: 10s\n");
        let l = layers(
            Some(path.clone()),
            &[("SWITCHYARD_HOSTNAME_OVERRIDE", "From-Env"), ("SWITCHYARD_SYNC_PERIOD", "20s")],
            serde_json::json!({"syncPeriod": "40s"}),
        );
        let c = load(&l, &registry()).unwrap();
        assert_eq!(c.mode, "ipvs", "file beats defaults");
        assert_eq!(c.hostname_override.as_deref(), Some("from-env"), "env beats file; lowercased");
        assert_eq!(c.sync_period, Duration::from_secs(40), "flags beat env");
        assert_eq!(c.cluster_cidrs, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn env_keys_nest_and_keep_kube_proxy_acronyms() {
        assert_eq!(env_key("cluster_cidr"), "clusterCIDR");
        assert_eq!(env_key("iptables__masquerade_bit"), "iptables.masqueradeBit");
        assert_eq!(env_key("ipvs__strict_arp"), "ipvs.strictARP");
        assert_eq!(env_key("CLIENT_CONNECTION__KUBECONFIG"), "clientConnection.kubeconfig");
        let l = layers(
            None,
            &[("SWITCHYARD_IPTABLES__MASQUERADE_BIT", "13"), ("SWITCHYARD_TEST_PATIENCE_MS", "5")],
            Value::Null,
        );
        let c = load(&l, &registry()).unwrap();
        assert_eq!(c.section("iptables")["masqueradeBit"], 13);
    }

    #[test]
    fn reads_a_kubeadm_kube_proxy_configmap() {
        let (_d, path) = file(KUBEADM_CONFIG);
        let c = load(&layers(Some(path), &[], Value::Null), &registry()).unwrap();
        assert_eq!(c.flavour, FileFlavour::KubeProxy);
        assert_eq!(c.mode, "iptables", "empty mode is the default");
        assert_eq!(c.kubeconfig.as_deref(), Some(std::path::Path::new("/var/lib/kube-proxy/kubeconfig.conf")));
        assert_eq!(c.cluster_cidrs, vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]);
        assert_eq!(c.sync_period, DEFAULT_SYNC_PERIOD, "0s means default");
        assert_eq!(c.healthz_bind_address, DEFAULT_HEALTHZ_BIND_ADDRESS, "empty means default");
        assert!(c.masquerade_all, "iptables.masqueradeAll is honoured");
        assert_eq!(c.section("iptables"), serde_json::json!({"masqueradeBit": 14}), "nulls are defaults");
    }

    #[test]
    fn lists_every_problem_with_its_path_and_origin() {
        let (_d, path) = file(
            "mode: iptables\nhealthzBindAdress: 0.0.0.0:1\nsyncPeriod: soon\nnodePortAddresses: [10.0.0.0/8, bogus]\n\
             iptables:\n  masqueradeBit: 14\n  colour: blue\nlogging:\n  format: xml\n",
        );
        let l = layers(
            Some(path.clone()),
            &[("SWITCHYARD_MASQUERADE_ALL", "maybe")],
            serde_json::json!({"clusterCIDR": "10.0.0.0/33"}),
        );
        let err = load(&l, &registry()).unwrap_err();
        let text = err.to_string();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "healthzBindAdress",
            "syncPeriod",
            "nodePortAddresses[1]",
            "iptables.colour",
            "logging.format",
            "masqueradeAll",
            "clusterCIDR[0]",
        ] {
            assert!(paths.contains(&expected), "{expected} missing in {text}");
        }
        assert!(text.contains("unknown field"), "{text}");
        assert!(text.contains(&format!("config file {}", path.display())), "{text}");
        assert!(text.contains("from command line"), "{text}");
        assert!(text.contains("from environment"), "{text}");
    }

    #[test]
    fn debug_handlers_are_off_unless_asked_for() {
        assert!(!load(&layers(None, &[], Value::Null), &registry()).unwrap().enable_debug_handlers);
        let (_d, path) = file("enableDebugHandlers: true\n");
        assert!(load(&layers(Some(path), &[], Value::Null), &registry()).unwrap().enable_debug_handlers);
        let env = [("SWITCHYARD_ENABLE_DEBUG_HANDLERS", "true")];
        assert!(load(&layers(None, &env, Value::Null), &registry()).unwrap().enable_debug_handlers);
        let flags = serde_json::json!({"enableDebugHandlers": true});
        assert!(load(&layers(None, &[], flags), &registry()).unwrap().enable_debug_handlers);
        let err = load_yaml_str("enableDebugHandlers: sure\n", &registry()).unwrap_err();
        assert_eq!(err.problems[0].path, "enableDebugHandlers");
    }

    #[test]
    fn unknown_mode_lists_known_ones() {
        let err = load(&layers(None, &[], serde_json::json!({"mode": "nope"})), &registry()).unwrap_err();
        assert!(err.to_string().contains("known modes: iptables, ipvs"), "{err}");
    }

    #[test]
    fn missing_and_malformed_files() {
        let err = load(&layers(Some("/nonexistent/x.yaml".into()), &[], Value::Null), &registry()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.yaml"), "{err}");
        let (_d, path) = file("mode: [unclosed\n");
        let err = load(&layers(Some(path.clone()), &[], Value::Null), &registry()).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn wrong_kind() {
        let (_d, path) = file("apiVersion: v1\nkind: ConfigMap\n");
        let err = load(&layers(Some(path), &[], Value::Null), &registry()).unwrap_err();
        assert_eq!(err.problems[0].path, "kind");
    }

    #[test]
    fn sources() {
        assert_eq!(SourceSpec::parse("kube").unwrap(), SourceSpec::Kube);
        assert_eq!(SourceSpec::parse("file:/x").unwrap(), SourceSpec::File("/x".into()));
        assert!(SourceSpec::parse("file:").is_err());
        assert!(SourceSpec::parse("http://x").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m0s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1h2m3.5s").unwrap(), Duration::from_secs_f64(3723.5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "5", "s", "-1s", "1x", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // Longer than a Duration holds: an error, not a panic (the config fuzz target).
        let err = parse_duration("99999999999999999999999h").unwrap_err();
        assert!(err.contains("too long"), "{err}");
        let err = load_yaml_str("syncPeriod: 99999999999999999999999h\n", &registry()).unwrap_err();
        assert_eq!(err.problems[0].path, "syncPeriod");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn min_sync_longer_than_sync_is_rejected() {
        let err = load(&layers(None, &[], serde_json::json!({"syncPeriod": "1s", "minSyncPeriod": "2s"})), &registry())
            .unwrap_err();
        assert_eq!(err.problems[0].path, "minSyncPeriod");
    }

    const KUBEADM_CONFIG: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: true
  masqueradeBit: 14
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;
}
