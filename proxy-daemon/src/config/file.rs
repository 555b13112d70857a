//! The configuration document as written: kube-proxy's
//! `KubeProxyConfiguration` v1alpha1 (`k8s.io/kube-proxy/config/v1alpha1`,
//! field for field) plus switchyard's own fields, every one optional so that
//! "absent", "null" and "zero" stay distinguishable (kube-proxy defaults
//! `null` and zero values, and leaves explicit ones).
//!
//! Deserialized with serde derive; [`super::decode`] reports type errors
//! with their paths and unknown fields; [`super::resolve`] applies
//! kube-proxy's defaults and validation.

use std::collections::BTreeMap;

use proxy_core::GoDuration;
use serde::Deserialize;

/// A string; a number is read as its text (environment values are typed
/// by figment, and a host name may look like a number).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A list of strings, or one comma-separated string (flags, environment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct List(pub Vec<String>);

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a list of strings"))? {
            Raw::One(s) => List(s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()),
            Raw::Many(v) => List(v),
        })
    }
}

/// `logging.flushFrequency`: a duration string, or a number of nanoseconds
/// (component-base's `TimeOrMetaDuration`; kubeadm writes `0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushFrequency(pub GoDuration);

impl<'de> Deserialize<'de> for FlushFrequency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Nanos(i64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a duration or nanoseconds"))? {
            Raw::Nanos(n) => Ok(FlushFrequency(GoDuration::from_nanos(n))),
            Raw::Text(s) => GoDuration::parse(&s).map(FlushFrequency).map_err(serde::de::Error::custom),
        }
    }
}

/// The whole document.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub api_version: Option<Text>,
    pub kind: Option<Text>,
    pub feature_gates: Option<BTreeMap<String, bool>>,
    pub client_connection: Option<ClientConnection>,
    pub logging: Option<Logging>,
    pub hostname_override: Option<Text>,
    pub bind_address: Option<Text>,
    pub healthz_bind_address: Option<Text>,
    pub metrics_bind_address: Option<Text>,
    pub bind_address_hard_fail: Option<bool>,
    pub enable_profiling: Option<bool>,
    pub show_hidden_metrics_for_version: Option<Text>,
    pub mode: Option<Text>,
    pub iptables: Option<IptablesSection>,
    pub ipvs: Option<IpvsSection>,
    pub nftables: Option<NftablesSection>,
    pub winkernel: Option<Winkernel>,
    pub detect_local_mode: Option<Text>,
    pub detect_local: Option<DetectLocal>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<List>,
    pub node_port_addresses: Option<List>,
    pub oom_score_adj: Option<i64>,
    pub conntrack: Option<Conntrack>,
    pub config_sync_period: Option<GoDuration>,
    pub port_range: Option<Text>,
    pub windows_run_as_service: Option<bool>,

    // switchyard's own.
    /// Overrides the mode section's `syncPeriod`.
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
    /// `--masquerade-all`: overrides the mode section's `masqueradeAll`.
    pub masquerade_all: Option<bool>,
    pub master: Option<Text>,
    pub source: Option<Text>,
    pub ip_families: Option<List>,
    pub netns: Option<Text>,
    pub file_poll_interval: Option<GoDuration>,
    pub enable_debug_handlers: Option<bool>,
    pub remove_kube_proxy_leftovers: Option<bool>,
    pub service_proxy_name: Option<Text>,
    /// `--healthz-port`, `--metrics-port` (deprecated kube-proxy flags; flags only).
    pub healthz_port: Option<i64>,
    pub metrics_port: Option<i64>,
}

/// `clientConnection` (component-base's `ClientConnectionConfiguration`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConnection {
    pub kubeconfig: Option<Text>,
    pub accept_content_types: Option<Text>,
    pub content_type: Option<Text>,
    pub qps: Option<f64>,
    pub burst: Option<i64>,
}

/// `logging` (component-base's `LoggingConfiguration`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Logging {
    pub format: Option<Text>,
    pub flush_frequency: Option<FlushFrequency>,
    pub verbosity: Option<i64>,
    pub vmodule: Option<Vec<VModuleItem>>,
    pub options: Option<LoggingOptions>,
}

#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VModuleItem {
    pub file_pattern: Option<Text>,
    pub verbosity: Option<i64>,
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggingOptions {
    pub json: Option<FormatOptions>,
    pub text: Option<FormatOptions>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FormatOptions {
    pub split_stream: Option<bool>,
    /// A Kubernetes quantity (`"0"`, `512`, `1Ki`); zero disables buffering.
    pub info_buffer_size: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IptablesSection {
    pub masquerade_bit: Option<i64>,
    pub masquerade_all: Option<bool>,
    pub localhost_node_ports: Option<bool>,
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
}

/// An IPVS timeout: a Go duration as kube-proxy writes it, or (switchyard's
/// earlier spelling) a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpvsTimeout(pub GoDuration);

impl<'de> Deserialize<'de> for IpvsTimeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(i64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a duration such as \"900s\""))? {
            Raw::Seconds(n) => Ok(IpvsTimeout(GoDuration::from_nanos(n.saturating_mul(1_000_000_000)))),
            Raw::Text(s) => GoDuration::parse(&s).map(IpvsTimeout).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpvsSection {
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
    pub scheduler: Option<Text>,
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<List>,
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    pub tcp_timeout: Option<IpvsTimeout>,
    pub tcp_fin_timeout: Option<IpvsTimeout>,
    pub udp_timeout: Option<IpvsTimeout>,
    /// The masquerade bit is `iptables.masqueradeBit` in kube-proxy; ours
    /// may sit here too. Either way the backend receives it here.
    pub masquerade_bit: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NftablesSection {
    pub masquerade_bit: Option<i64>,
    pub masquerade_all: Option<bool>,
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Winkernel {
    pub network_name: Option<Text>,
    pub source_vip: Option<Text>,
    #[serde(rename = "enableDSR")]
    pub enable_dsr: Option<bool>,
    pub root_hns_endpoint_name: Option<Text>,
    pub forward_health_check_vip: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectLocal {
    pub bridge_interface: Option<Text>,
    pub interface_name_prefix: Option<Text>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conntrack {
    pub max_per_core: Option<i64>,
    pub min: Option<i64>,
    pub tcp_established_timeout: Option<GoDuration>,
    pub tcp_close_wait_timeout: Option<GoDuration>,
    pub tcp_be_liberal: Option<bool>,
    pub udp_timeout: Option<GoDuration>,
    pub udp_stream_timeout: Option<GoDuration>,
}
