//! Command-line flags: every flag of kube-proxy (v1.37), spelled and parsed
//! as kube-proxy's pflag set does, plus switchyard's own.
//!
//! Flags are the last configuration layer: each one given is written under
//! its configuration key (see [`Flags::to_map`]) and validated with the
//! rest, so a bad flag value is reported like a bad file value. Where a
//! kube-proxy flag cannot mean anything here, it is accepted and the
//! configuration warns about its key once at start. [`KUBE_PROXY_FLAGS`]
//! says which flag is which; `tests/kube_proxy_compat.rs` compares it with
//! the reference kube-proxy's `--help`, and `docs/compatibility.md` is
//! generated from it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};

use crate::compat::Support;
use crate::config::{Layers, insert_path};

/// switchyard: a Kubernetes service proxy, a drop-in kube-proxy replacement with pluggable dataplanes.
#[derive(Debug, Parser)]
// pflag lets a flag repeat (the last value wins); so does switchyard.
#[command(name = "switchyard", about, long_about = None, disable_version_flag = true, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print what the kernel holds (read back by the backend), and where it
    /// differs from the desired state computed from the source.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Only read the kernel; do not load the source to compare against.
    #[arg(long)]
    pub no_diff: bool,
    /// How long to wait for the source's initial list when comparing (Go duration).
    #[arg(long, default_value = "30s")]
    pub source_timeout: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Go's `strconv.ParseBool`, as pflag reads `--flag=VALUE`.
fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (true or false)")),
    }
}

/// pflag's `mapStringBool`: `A=true,B=false`.
fn feature_gates(s: &str) -> Result<BTreeMap<String, bool>, String> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| format!("missing bool value for {item}"))?;
        out.insert(k.trim().to_string(), go_bool(v.trim()).map_err(|e| format!("invalid value of {k}: {e}"))?);
    }
    Ok(out)
}

/// klog's `--vmodule` value: `pattern=N,...` (a newtype: clap would take a
/// bare `Vec` for a repeated flag).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VModule(pub Vec<(String, i64)>);

/// Parses klog's `--vmodule`.
fn vmodule(s: &str) -> Result<VModule, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (p, n) = item.split_once('=').ok_or_else(|| format!("{item:?}: expected pattern=N"))?;
        out.push((p.to_string(), n.parse::<i64>().map_err(|_| format!("{item:?}: {n:?} is not a number"))?));
    }
    Ok(VModule(out))
}

/// Flags shared by the daemon and its subcommands. Booleans take
/// `--flag` or `--flag=BOOL` (never a separate word, as in Go's pflag).
#[derive(Debug, Args, Default)]
pub struct Flags {
    // ---- kube-proxy's flags ----
    /// Overrides the node's primary IP (kube-proxy's historical name; nothing is bound to it).
    #[arg(long = "bind-address", global = true, value_name = "IP")]
    pub bind_address: Option<String>,

    /// Treat failure to bind a server port as fatal.
    #[arg(long = "bind-address-hard-fail", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub bind_address_hard_fail: Option<bool>,

    /// Remove everything every proxy mode installs, then exit.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub cleanup: Option<bool>,

    /// The CIDR range(s) of the pods in the cluster (a dual-stack pair comma-separated);
    /// with detect-local-mode ClusterCIDR, traffic from elsewhere to ClusterIPs is masqueraded.
    #[arg(long = "cluster-cidr", global = true, value_name = "CIDRS")]
    pub cluster_cidr: Option<String>,

    /// Configuration file: a kube-proxy KubeProxyConfiguration or switchyard's own format.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// kube-proxy's informer resync period (no effect: switchyard's watches need none).
    #[arg(long = "config-sync-period", global = true, value_name = "DURATION")]
    pub config_sync_period: Option<String>,

    /// Maximum number of NAT connections to track per CPU core (0 leaves the limit as is).
    #[arg(long = "conntrack-max-per-core", global = true, value_name = "INT32", allow_negative_numbers = true)]
    pub conntrack_max_per_core: Option<i32>,

    /// Minimum number of conntrack entries, whatever conntrack-max-per-core gives.
    #[arg(long = "conntrack-min", global = true, value_name = "INT32", allow_negative_numbers = true)]
    pub conntrack_min: Option<i32>,

    /// Set nf_conntrack_tcp_be_liberal to 1.
    #[arg(long = "conntrack-tcp-be-liberal", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub conntrack_tcp_be_liberal: Option<bool>,

    /// NAT timeout for TCP connections in the CLOSE_WAIT state.
    #[arg(long = "conntrack-tcp-timeout-close-wait", global = true, value_name = "DURATION")]
    pub conntrack_tcp_timeout_close_wait: Option<String>,

    /// Idle timeout for established TCP connections (0 leaves it as is).
    #[arg(long = "conntrack-tcp-timeout-established", global = true, value_name = "DURATION")]
    pub conntrack_tcp_timeout_established: Option<String>,

    /// Idle timeout for UNREPLIED UDP connections (0 leaves it as is).
    #[arg(long = "conntrack-udp-timeout", global = true, value_name = "DURATION")]
    pub conntrack_udp_timeout: Option<String>,

    /// Idle timeout for ASSURED UDP connections (0 leaves it as is).
    #[arg(long = "conntrack-udp-timeout-stream", global = true, value_name = "DURATION")]
    pub conntrack_udp_timeout_stream: Option<String>,

    /// How to tell pod traffic apart: ClusterCIDR (default) or NodeCIDR.
    #[arg(long = "detect-local-mode", global = true, value_name = "MODE")]
    pub detect_local_mode: Option<String>,

    /// kube-proxy's feature gates, `Name=true,Other=false` (no effect in switchyard).
    #[arg(long = "feature-gates", global = true, value_parser = feature_gates, value_name = "NAME=BOOL,...")]
    pub feature_gates: Option<BTreeMap<String, bool>>,

    /// IP address and port for the health server (/healthz, /livez, /readyz).
    #[arg(long = "healthz-bind-address", global = true, value_name = "IP:PORT")]
    pub healthz_bind_address: Option<String>,

    /// Deprecated (kube-proxy): the health server's port; 0 turns it off.
    #[arg(long = "healthz-port", global = true, hide = true, value_name = "PORT", allow_negative_numbers = true)]
    pub healthz_port: Option<i64>,

    /// The name of this Node (else the host name).
    #[arg(long = "hostname-override", global = true, value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// Apply what needs full privileges (the conntrack sysctls), then exit.
    #[arg(long = "init-only", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub init_only: Option<bool>,

    /// iptables mode, IPv4: NodePorts answer on 127.0.0.1 (route_localnet).
    #[arg(long = "iptables-localhost-nodeports", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub iptables_localhost_nodeports: Option<bool>,

    /// The fwmark bit that marks packets to masquerade (iptables and ipvs modes), 0-31.
    #[arg(long = "iptables-masquerade-bit", global = true, value_name = "INT32", allow_negative_numbers = true)]
    pub iptables_masquerade_bit: Option<i32>,

    /// The minimum interval between syncs (modes other than ipvs and nftables).
    #[arg(long = "iptables-min-sync-period", global = true, value_name = "DURATION")]
    pub iptables_min_sync_period: Option<String>,

    /// How often rules are fully re-synchronized (modes other than ipvs and nftables).
    #[arg(long = "iptables-sync-period", global = true, value_name = "DURATION")]
    pub iptables_sync_period: Option<String>,

    /// CIDRs whose virtual servers the ipvs mode leaves alone.
    #[arg(long = "ipvs-exclude-cidrs", global = true, value_name = "CIDRS")]
    pub ipvs_exclude_cidrs: Option<String>,

    /// The minimum interval between syncs in ipvs mode.
    #[arg(long = "ipvs-min-sync-period", global = true, value_name = "DURATION")]
    pub ipvs_min_sync_period: Option<String>,

    /// The IPVS scheduler (rr when empty).
    #[arg(long = "ipvs-scheduler", global = true, value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,

    /// Strict ARP: arp_ignore=1 and arp_announce=2 (MetalLB's L2 mode needs it).
    #[arg(long = "ipvs-strict-arp", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub ipvs_strict_arp: Option<bool>,

    /// How often rules are fully re-synchronized in ipvs mode.
    #[arg(long = "ipvs-sync-period", global = true, value_name = "DURATION")]
    pub ipvs_sync_period: Option<String>,

    /// IPVS idle TCP timeout (0 leaves it as is).
    #[arg(long = "ipvs-tcp-timeout", global = true, value_name = "DURATION")]
    pub ipvs_tcp_timeout: Option<String>,

    /// IPVS timeout after a TCP FIN (0 leaves it as is).
    #[arg(long = "ipvs-tcpfin-timeout", global = true, value_name = "DURATION")]
    pub ipvs_tcpfin_timeout: Option<String>,

    /// IPVS UDP timeout (0 leaves it as is).
    #[arg(long = "ipvs-udp-timeout", global = true, value_name = "DURATION")]
    pub ipvs_udp_timeout: Option<String>,

    /// Burst of requests to the API server.
    #[arg(long = "kube-api-burst", global = true, value_name = "INT32", allow_negative_numbers = true)]
    pub kube_api_burst: Option<i32>,

    /// Content type of requests to the API server (switchyard always speaks JSON).
    #[arg(long = "kube-api-content-type", global = true, value_name = "TYPE")]
    pub kube_api_content_type: Option<String>,

    /// Requests per second to the API server.
    #[arg(long = "kube-api-qps", global = true, value_name = "FLOAT")]
    pub kube_api_qps: Option<f32>,

    /// Path to a kubeconfig file with authorization and API server location.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// klog's flush interval (no effect: switchyard writes each line at once).
    #[arg(long = "log-flush-frequency", global = true, value_name = "DURATION")]
    pub log_flush_frequency: Option<String>,

    /// klog alpha option (refused unless its feature gate is on, as in kube-proxy).
    #[arg(long = "log-json-info-buffer-size", global = true, value_name = "QUANTITY")]
    pub log_json_info_buffer_size: Option<String>,

    /// klog alpha option (refused unless its feature gate is on, as in kube-proxy).
    #[arg(long = "log-json-split-stream", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub log_json_split_stream: Option<bool>,

    /// klog alpha option (refused unless its feature gate is on, as in kube-proxy).
    #[arg(long = "log-text-info-buffer-size", global = true, value_name = "QUANTITY")]
    pub log_text_info_buffer_size: Option<String>,

    /// klog alpha option (refused unless its feature gate is on, as in kube-proxy).
    #[arg(long = "log-text-split-stream", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub log_text_split_stream: Option<bool>,

    /// Log format: text or json.
    #[arg(long = "logging-format", visible_alias = "log-format", global = true, value_name = "FORMAT")]
    pub logging_format: Option<String>,

    /// SNAT all traffic sent to Service cluster IPs.
    #[arg(long = "masquerade-all", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub masquerade_all: Option<bool>,

    /// The address of the Kubernetes API server (overrides any value in kubeconfig).
    #[arg(long, global = true, value_name = "URL")]
    pub master: Option<String>,

    /// IP address and port for the metrics server (/metrics and the admin endpoints).
    #[arg(long = "metrics-bind-address", global = true, value_name = "IP:PORT")]
    pub metrics_bind_address: Option<String>,

    /// Deprecated (kube-proxy): the metrics server's port; 0 turns it off.
    #[arg(long = "metrics-port", global = true, hide = true, value_name = "PORT", allow_negative_numbers = true)]
    pub metrics_port: Option<i64>,

    /// Where NodePorts answer: CIDRs and the keywords primary, localhost, all (comma-separated).
    #[arg(long = "nodeport-addresses", global = true, value_name = "CIDRS|primary|localhost|all")]
    pub nodeport_addresses: Option<String>,

    /// The process's OOM score adjustment, -1000..1000.
    #[arg(long = "oom-score-adj", global = true, value_name = "INT32", allow_negative_numbers = true)]
    pub oom_score_adj: Option<i32>,

    /// detect-local-mode BridgeInterface: the bridge (not implemented in switchyard).
    #[arg(long = "pod-bridge-interface", global = true, value_name = "NAME")]
    pub pod_bridge_interface: Option<String>,

    /// detect-local-mode InterfaceNamePrefix: the prefix (not implemented in switchyard).
    #[arg(long = "pod-interface-name-prefix", global = true, value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,

    /// kube-proxy's /debug/pprof (no effect in switchyard).
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub profiling: Option<bool>,

    /// Which dataplane to use: iptables, ipvs, ebpf, or a registered plugin.
    #[arg(long = "proxy-mode", global = true, value_name = "MODE")]
    pub proxy_mode: Option<String>,

    /// Show metrics hidden since this version (switchyard hides none).
    #[arg(long = "show-hidden-metrics-for-version", global = true, value_name = "VERSION")]
    pub show_hidden_metrics_for_version: Option<String>,

    /// Log verbosity: 0-1 info, 2-3 one line per sync, 4-5 debug, 6+ trace.
    #[arg(short = 'v', long = "v", global = true, value_name = "LEVEL", allow_negative_numbers = true)]
    pub verbosity: Option<i64>,

    /// Print the version and exit (`--version` or `--version=raw`).
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "true|raw")]
    pub version: Option<String>,

    /// klog's per-file verbosity, `pattern=N,...` (no effect: use SWITCHYARD_LOG).
    #[arg(long, global = true, value_parser = vmodule, value_name = "PATTERN=N,...")]
    pub vmodule: Option<VModule>,

    /// Write the effective configuration as a KubeProxyConfiguration to this file, then exit.
    #[arg(long = "write-config-to", global = true, value_name = "PATH")]
    pub write_config_to: Option<PathBuf>,

    // ---- switchyard's own ----
    /// Where Services and EndpointSlices come from: `kube` (default) or `file:PATH`
    /// (a YAML file or a directory of Kubernetes manifests, watched for changes).
    #[arg(long, global = true, value_name = "kube|file:PATH")]
    pub source: Option<String>,

    /// How often rules are fully re-synchronized, whatever the mode (overrides the mode's flag).
    #[arg(long = "sync-period", global = true, value_name = "DURATION")]
    pub sync_period: Option<String>,

    /// The minimum interval between syncs, whatever the mode (overrides the mode's flag).
    #[arg(long = "min-sync-period", global = true, value_name = "DURATION")]
    pub min_sync_period: Option<String>,

    /// Serve the debug handlers on the metrics port: /configz, /debug/state,
    /// /loglevel, /debug/flags/v and /debug/barrier (off by default: any
    /// process on the host network could otherwise read the whole state and
    /// change the log level).
    #[arg(long = "enable-debug-handlers", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub enable_debug_handlers: Option<bool>,

    /// Remove upstream kube-proxy's leftovers (its `KUBE-*` chains, nftables
    /// tables, kube-ipvs0 and IPVS virtual servers) once this proxy's first
    /// sync is done: the migration from kube-proxy without a second step.
    #[arg(long = "remove-kube-proxy-leftovers", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub remove_kube_proxy_leftovers: Option<bool>,

    /// `--proxy-mode plugin`: the plugin program and its arguments, split on
    /// whitespace (the `plugin.command` key; a list there for arguments with spaces).
    #[arg(long = "plugin-command", global = true, value_name = "COMMAND")]
    pub plugin_command: Option<String>,

    /// `--proxy-mode plugin`: connect to a plugin listening on this Unix socket
    /// (a sidecar) instead of starting one (the `plugin.socket` key).
    #[arg(long = "plugin-socket", global = true, value_name = "PATH")]
    pub plugin_socket: Option<String>,

    /// Program this network namespace (a name under /run/netns or a path)
    /// instead of the process's own. For labs and tests.
    #[arg(long, global = true, value_name = "NAME|PATH")]
    pub netns: Option<String>,
}

impl Flags {
    /// `--cleanup` was given (and not `=false`).
    pub fn cleanup(&self) -> bool {
        self.cleanup == Some(true)
    }

    /// `--init-only` was given (and not `=false`).
    pub fn init_only(&self) -> bool {
        self.init_only == Some(true)
    }

    /// The flags that were given, under their configuration keys.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut set = |key: &str, v: Option<Value>| {
            if let Some(v) = v {
                insert_path(&mut m, key, v);
            }
        };
        let s = |v: &Option<String>| v.clone().map(Value::String);
        let b = |v: Option<bool>| v.map(Value::Bool);
        let n = |v: Option<i32>| v.map(Value::from);
        let list = |v: &Option<String>| {
            v.as_ref().map(|l| Value::Array(l.split(',').map(|x| Value::String(x.trim().into())).collect()))
        };
        set("bindAddress", s(&self.bind_address));
        set("bindAddressHardFail", b(self.bind_address_hard_fail));
        set("clusterCIDR", s(&self.cluster_cidr));
        set("configSyncPeriod", s(&self.config_sync_period));
        set("conntrack.maxPerCore", n(self.conntrack_max_per_core));
        set("conntrack.min", n(self.conntrack_min));
        set("conntrack.tcpBeLiberal", b(self.conntrack_tcp_be_liberal));
        set("conntrack.tcpCloseWaitTimeout", s(&self.conntrack_tcp_timeout_close_wait));
        set("conntrack.tcpEstablishedTimeout", s(&self.conntrack_tcp_timeout_established));
        set("conntrack.udpTimeout", s(&self.conntrack_udp_timeout));
        set("conntrack.udpStreamTimeout", s(&self.conntrack_udp_timeout_stream));
        set("detectLocalMode", s(&self.detect_local_mode));
        set("featureGates", self.feature_gates.as_ref().map(|g| serde_json::to_value(g).unwrap_or(Value::Null)));
        set("healthzBindAddress", s(&self.healthz_bind_address));
        set("healthzPort", self.healthz_port.map(Value::from));
        // kube-proxy trims and lowercases the flag's value.
        set("hostnameOverride", self.hostname_override.as_ref().map(|h| Value::String(h.trim().to_lowercase())));
        set("iptables.localhostNodePorts", b(self.iptables_localhost_nodeports));
        set("iptables.masqueradeBit", n(self.iptables_masquerade_bit));
        set("iptables.minSyncPeriod", s(&self.iptables_min_sync_period));
        set("iptables.syncPeriod", s(&self.iptables_sync_period));
        set("ipvs.excludeCIDRs", list(&self.ipvs_exclude_cidrs));
        set("ipvs.minSyncPeriod", s(&self.ipvs_min_sync_period));
        set("ipvs.scheduler", s(&self.ipvs_scheduler));
        set("ipvs.strictARP", b(self.ipvs_strict_arp));
        set("ipvs.syncPeriod", s(&self.ipvs_sync_period));
        set("ipvs.tcpTimeout", s(&self.ipvs_tcp_timeout));
        set("ipvs.tcpFinTimeout", s(&self.ipvs_tcpfin_timeout));
        set("ipvs.udpTimeout", s(&self.ipvs_udp_timeout));
        set("clientConnection.burst", n(self.kube_api_burst));
        set("clientConnection.contentType", s(&self.kube_api_content_type));
        set("clientConnection.qps", self.kube_api_qps.map(|q| Value::from(f64::from(q))));
        set("clientConnection.kubeconfig", self.kubeconfig.as_ref().map(|p| Value::String(p.display().to_string())));
        set("logging.flushFrequency", s(&self.log_flush_frequency));
        set("logging.options.json.infoBufferSize", s(&self.log_json_info_buffer_size));
        set("logging.options.json.splitStream", b(self.log_json_split_stream));
        set("logging.options.text.infoBufferSize", s(&self.log_text_info_buffer_size));
        set("logging.options.text.splitStream", b(self.log_text_split_stream));
        set("logging.format", s(&self.logging_format));
        set("masqueradeAll", b(self.masquerade_all));
        set("master", s(&self.master));
        set("metricsBindAddress", s(&self.metrics_bind_address));
        set("metricsPort", self.metrics_port.map(Value::from));
        set("nodePortAddresses", list(&self.nodeport_addresses));
        set("oomScoreAdj", n(self.oom_score_adj));
        set("detectLocal.bridgeInterface", s(&self.pod_bridge_interface));
        set("detectLocal.interfaceNamePrefix", s(&self.pod_interface_name_prefix));
        set("enableProfiling", b(self.profiling));
        set("mode", s(&self.proxy_mode));
        set("showHiddenMetricsForVersion", s(&self.show_hidden_metrics_for_version));
        set("logging.verbosity", self.verbosity.map(Value::from));
        set(
            "logging.vmodule",
            self.vmodule.as_ref().map(|v| {
                Value::Array(v.0.iter().map(|(p, n)| serde_json::json!({"filePattern": p, "verbosity": n})).collect())
            }),
        );
        set("source", s(&self.source));
        set("syncPeriod", s(&self.sync_period));
        set("minSyncPeriod", s(&self.min_sync_period));
        set("enableDebugHandlers", b(self.enable_debug_handlers));
        set("netns", s(&self.netns));
        set("removeKubeProxyLeftovers", b(self.remove_kube_proxy_leftovers));
        set(
            "plugin.command",
            self.plugin_command
                .as_ref()
                .map(|c| Value::Array(c.split_whitespace().map(|w| Value::String(w.into())).collect())),
        );
        set("plugin.socket", s(&self.plugin_socket));
        m
    }

    /// The configuration layers these flags describe (environment read from the process).
    pub fn layers(&self) -> Layers {
        let mut flags = self.to_map();
        // As kube-proxy: the deprecated port flags count only without a config file.
        if self.config.is_some() {
            flags.remove("healthzPort");
            flags.remove("metricsPort");
        }
        Layers { file: self.config.clone(), env: None, flags }
    }
}

/// One kube-proxy flag: its configuration key (or what it does) and how switchyard treats it.
#[derive(Clone, Copy, Debug)]
pub struct FlagInfo {
    pub flag: &'static str,
    /// The configuration key it sets, or `(action)`.
    pub key: &'static str,
    pub support: Support,
}

const fn same(flag: &'static str, key: &'static str) -> FlagInfo {
    FlagInfo { flag, key, support: Support::Same }
}

const fn warned(flag: &'static str, key: &'static str, why: &'static str) -> FlagInfo {
    FlagInfo { flag, key, support: Support::Warned(why) }
}

const fn different(flag: &'static str, key: &'static str, why: &'static str) -> FlagInfo {
    FlagInfo { flag, key, support: Support::Different(why) }
}

/// Every flag of kube-proxy v1.37's `--help`, in its order.
pub const KUBE_PROXY_FLAGS: &[FlagInfo] = &[
    same("bind-address", "bindAddress"),
    same("bind-address-hard-fail", "bindAddressHardFail"),
    different(
        "cleanup",
        "(action)",
        "removes what every switchyard mode installs (kube-proxy's leftovers too, see the migration)",
    ),
    same("cluster-cidr", "clusterCIDR"),
    different(
        "config",
        "(the file)",
        "also reads switchyard's own format; the other flags still apply (kube-proxy ignores most of them with --config), with a warning naming each",
    ),
    warned("config-sync-period", "configSyncPeriod", "validated; switchyard's watches need no periodic re-list"),
    same("conntrack-max-per-core", "conntrack.maxPerCore"),
    same("conntrack-min", "conntrack.min"),
    same("conntrack-tcp-be-liberal", "conntrack.tcpBeLiberal"),
    same("conntrack-tcp-timeout-close-wait", "conntrack.tcpCloseWaitTimeout"),
    same("conntrack-tcp-timeout-established", "conntrack.tcpEstablishedTimeout"),
    same("conntrack-udp-timeout", "conntrack.udpTimeout"),
    same("conntrack-udp-timeout-stream", "conntrack.udpStreamTimeout"),
    different(
        "detect-local-mode",
        "detectLocalMode",
        "ClusterCIDR and NodeCIDR as kube-proxy; BridgeInterface and InterfaceNamePrefix stop the start with exit 3 (not implemented)",
    ),
    warned("feature-gates", "featureGates", "switchyard has no feature gates; unknown names are not refused"),
    same("healthz-bind-address", "healthzBindAddress"),
    same("help", "(action)"),
    same("hostname-override", "hostnameOverride"),
    different(
        "init-only",
        "(action)",
        "applies the conntrack sysctls and the mode's own (iptables: route_localnet), then exits, as kube-proxy; the ipvs mode's sysctls are still set only when the proxy starts",
    ),
    same("iptables-localhost-nodeports", "iptables.localhostNodePorts"),
    same("iptables-masquerade-bit", "iptables.masqueradeBit"),
    same("iptables-min-sync-period", "iptables.minSyncPeriod"),
    same("iptables-sync-period", "iptables.syncPeriod"),
    different(
        "ipvs-exclude-cidrs",
        "ipvs.excludeCIDRs",
        "validated and handed to the ipvs backend, which deletes only virtual servers it owns anyway",
    ),
    same("ipvs-min-sync-period", "ipvs.minSyncPeriod"),
    same("ipvs-scheduler", "ipvs.scheduler"),
    same("ipvs-strict-arp", "ipvs.strictARP"),
    same("ipvs-sync-period", "ipvs.syncPeriod"),
    same("ipvs-tcp-timeout", "ipvs.tcpTimeout"),
    same("ipvs-tcpfin-timeout", "ipvs.tcpFinTimeout"),
    same("ipvs-udp-timeout", "ipvs.udpTimeout"),
    same("kube-api-burst", "clientConnection.burst"),
    warned(
        "kube-api-content-type",
        "clientConnection.contentType",
        "switchyard always speaks application/json (protobuf, kube-proxy's default, is accepted silently)",
    ),
    same("kube-api-qps", "clientConnection.qps"),
    same("kubeconfig", "clientConnection.kubeconfig"),
    warned("log-flush-frequency", "logging.flushFrequency", "validated; switchyard writes every log line at once"),
    same("log-json-info-buffer-size", "logging.options.json.infoBufferSize"),
    same("log-json-split-stream", "logging.options.json.splitStream"),
    same("log-text-info-buffer-size", "logging.options.text.infoBufferSize"),
    same("log-text-split-stream", "logging.options.text.splitStream"),
    same("logging-format", "logging.format"),
    same("masquerade-all", "masqueradeAll"),
    same("master", "master"),
    same("metrics-bind-address", "metricsBindAddress"),
    same("nodeport-addresses", "nodePortAddresses"),
    same("oom-score-adj", "oomScoreAdj"),
    different(
        "pod-bridge-interface",
        "detectLocal.bridgeInterface",
        "accepted; detect-local-mode BridgeInterface is not implemented (exit 3)",
    ),
    different(
        "pod-interface-name-prefix",
        "detectLocal.interfaceNamePrefix",
        "accepted; detect-local-mode InterfaceNamePrefix is not implemented (exit 3)",
    ),
    warned("profiling", "enableProfiling", "switchyard serves no /debug/pprof"),
    different(
        "proxy-mode",
        "mode",
        "iptables and ipvs as kube-proxy, plus ebpf and plugins; nftables exits 3 until its backend lands",
    ),
    warned(
        "show-hidden-metrics-for-version",
        "showHiddenMetricsForVersion",
        "validated as kube-proxy does; switchyard hides no metric",
    ),
    different(
        "v",
        "logging.verbosity",
        "0-1 info, 2-3 one line per sync, 4-5 debug, 6+ trace (tracing levels, not klog's)",
    ),
    different(
        "version",
        "(action)",
        "prints switchyard's version; --version=vX.Y.Z (which sets the version kube-proxy reports) is accepted with a warning",
    ),
    warned(
        "vmodule",
        "logging.vmodule",
        "Go file patterns name nothing here; SWITCHYARD_LOG takes a tracing filter per module",
    ),
    same("write-config-to", "(action)"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn kube_proxy_spellings() {
        let cli = Cli::try_parse_from([
            "switchyard",
            "--proxy-mode=iptables",
            "--iptables-sync-period=10s",
            "--iptables-min-sync-period",
            "2s",
            "--masquerade-all",
            "--cluster-cidr=10.244.0.0/16",
            "--nodeport-addresses=10.0.0.0/8,192.168.0.0/16",
            "--healthz-bind-address=127.0.0.1:0",
            "--feature-gates=A=true,B=false",
            "--conntrack-max-per-core=0",
            "--ipvs-strict-arp",
            "--vmodule=foo*=3",
            "-v",
            "4",
        ])
        .unwrap();
        let m = Value::Object(cli.flags.to_map());
        assert_eq!(m["mode"], "iptables");
        assert_eq!(m["iptables"]["syncPeriod"], "10s");
        assert_eq!(m["iptables"]["minSyncPeriod"], "2s");
        assert_eq!(m["masqueradeAll"], true);
        assert_eq!(m["logging"]["verbosity"], 4);
        assert_eq!(m["nodePortAddresses"], serde_json::json!(["10.0.0.0/8", "192.168.0.0/16"]));
        assert_eq!(m["featureGates"], serde_json::json!({"A": true, "B": false}));
        assert_eq!(m["conntrack"]["maxPerCore"], 0);
        assert_eq!(m["ipvs"]["strictARP"], true);
        assert_eq!(m["logging"]["vmodule"][0]["filePattern"], "foo*");
    }

    #[test]
    fn a_boolean_flag_never_swallows_the_next_word() {
        let cli = Cli::try_parse_from(["switchyard", "--masquerade-all", "inspect"]).unwrap();
        assert_eq!(cli.flags.masquerade_all, Some(true));
        assert!(cli.command.is_some());
        let cli = Cli::try_parse_from(["switchyard", "--masquerade-all=false", "--cleanup"]).unwrap();
        assert_eq!(cli.flags.masquerade_all, Some(false));
        assert!(cli.flags.cleanup());
    }

    #[test]
    fn inspect_takes_the_global_flags() {
        let cli = Cli::try_parse_from(["switchyard", "inspect", "-o", "json", "--source", "file:/x"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Inspect(InspectArgs { output: OutputFormat::Json, .. }))));
        assert_eq!(cli.flags.source.as_deref(), Some("file:/x"));
    }

    #[test]
    fn enable_debug_handlers_flag() {
        let cli = Cli::try_parse_from(["switchyard"]).unwrap();
        assert!(!Value::Object(cli.flags.to_map()).as_object().unwrap().contains_key("enableDebugHandlers"));
        let cli = Cli::try_parse_from(["switchyard", "--enable-debug-handlers"]).unwrap();
        assert_eq!(Value::Object(cli.flags.to_map())["enableDebugHandlers"], true);
    }

    #[test]
    fn every_listed_kube_proxy_flag_is_a_flag_here() {
        let cmd = Cli::command();
        let longs: Vec<String> =
            cmd.get_arguments().filter_map(|a| a.get_long().map(String::from)).chain(["help".to_string()]).collect();
        for f in KUBE_PROXY_FLAGS {
            assert!(longs.contains(&f.flag.to_string()), "--{} is listed but not accepted", f.flag);
        }
    }
}
