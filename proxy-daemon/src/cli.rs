//! Command-line flags, spelled as kube-proxy spells them.
//!
//! Flags are the last configuration layer: each one set is written under
//! its configuration key (see [`Flags::to_layer`]) and validated with the
//! rest, so a bad flag value is reported like a bad file value.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};

use crate::config::{Layers, insert_path};

/// switchyard: a Kubernetes service proxy, a drop-in kube-proxy replacement with pluggable dataplanes.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
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

/// Flags shared by the daemon and its subcommands.
#[derive(Debug, Args, Default)]
pub struct Flags {
    /// Configuration file: a kube-proxy KubeProxyConfiguration or switchyard's own format.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Which dataplane to use: iptables, ipvs, ebpf, or a registered plugin.
    #[arg(long = "proxy-mode", global = true, value_name = "MODE")]
    pub proxy_mode: Option<String>,

    /// Path to a kubeconfig file with authorization and API server location.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The address of the Kubernetes API server (overrides any value in kubeconfig).
    #[arg(long, global = true, value_name = "URL")]
    pub master: Option<String>,

    /// Where Services and EndpointSlices come from: `kube` (default) or `file:PATH`
    /// (a YAML file or a directory of Kubernetes manifests, watched for changes).
    #[arg(long, global = true, value_name = "kube|file:PATH")]
    pub source: Option<String>,

    /// If non-empty, will be used as the name of the Node this proxy runs on.
    #[arg(long = "hostname-override", global = true, value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// Overrides the node's primary IP (kube-proxy's historical name).
    #[arg(long = "bind-address", global = true, value_name = "IP")]
    pub bind_address: Option<String>,

    /// The CIDR range(s) of the pods in the cluster (comma-separated for dual-stack);
    /// traffic to ClusterIPs from outside them is masqueraded.
    #[arg(long = "cluster-cidr", global = true, value_name = "CIDRS")]
    pub cluster_cidr: Option<String>,

    /// Node IP ranges that accept NodePort traffic (comma-separated CIDRs), or `primary`.
    #[arg(long = "nodeport-addresses", global = true, value_name = "CIDRS|primary")]
    pub nodeport_addresses: Option<String>,

    /// SNAT all traffic sent to Service cluster IPs.
    #[arg(long = "masquerade-all", global = true, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub masquerade_all: Option<bool>,

    /// How often rules are fully re-synchronized (e.g. 30s, 1m0s).
    #[arg(long = "sync-period", visible_aliases = ["iptables-sync-period", "ipvs-sync-period"], global = true, value_name = "DURATION")]
    pub sync_period: Option<String>,

    /// The minimum interval between syncs when Services or EndpointSlices change (e.g. 1s).
    #[arg(long = "min-sync-period", visible_aliases = ["iptables-min-sync-period", "ipvs-min-sync-period"], global = true, value_name = "DURATION")]
    pub min_sync_period: Option<String>,

    /// IP address and port for the health server (/healthz, /livez, /readyz).
    #[arg(long = "healthz-bind-address", global = true, value_name = "ADDR:PORT")]
    pub healthz_bind_address: Option<String>,

    /// IP address and port for the metrics server (/metrics and the admin endpoints).
    #[arg(long = "metrics-bind-address", global = true, value_name = "ADDR:PORT")]
    pub metrics_bind_address: Option<String>,

    /// Serve the debug handlers on the metrics port: /configz, /debug/state,
    /// /loglevel, /debug/flags/v and /debug/barrier (off by default: any
    /// process on the host network could otherwise read the whole state and
    /// change the log level).
    #[arg(long = "enable-debug-handlers", global = true, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub enable_debug_handlers: Option<bool>,

    /// Treat failure to bind a server port as fatal.
    #[arg(long = "bind-address-hard-fail", global = true, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub bind_address_hard_fail: Option<bool>,

    /// Remove everything every proxy mode installs, then exit.
    #[arg(long, global = true)]
    pub cleanup: bool,

    /// Log verbosity: 0-1 info, 2-3 one line per sync, 4-5 debug, 6+ trace.
    #[arg(short = 'v', long = "v", global = true, value_name = "LEVEL")]
    pub verbosity: Option<u8>,

    /// Log format: text or json.
    #[arg(long = "logging-format", visible_alias = "log-format", global = true, value_name = "FORMAT")]
    pub logging_format: Option<String>,

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
    /// The flags that were given, under their configuration keys.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut set = |key: &str, v: Option<Value>| {
            if let Some(v) = v {
                insert_path(&mut m, key, v);
            }
        };
        let s = |v: &Option<String>| v.clone().map(Value::String);
        set("mode", s(&self.proxy_mode));
        set("clientConnection.kubeconfig", self.kubeconfig.as_ref().map(|p| Value::String(p.display().to_string())));
        set("master", s(&self.master));
        set("source", s(&self.source));
        set("hostnameOverride", s(&self.hostname_override));
        set("bindAddress", s(&self.bind_address));
        set("clusterCIDR", s(&self.cluster_cidr));
        set("nodePortAddresses", s(&self.nodeport_addresses));
        set("masqueradeAll", self.masquerade_all.map(Value::Bool));
        set("syncPeriod", s(&self.sync_period));
        set("minSyncPeriod", s(&self.min_sync_period));
        set("healthzBindAddress", s(&self.healthz_bind_address));
        set("metricsBindAddress", s(&self.metrics_bind_address));
        set("bindAddressHardFail", self.bind_address_hard_fail.map(Value::Bool));
        set("enableDebugHandlers", self.enable_debug_handlers.map(Value::Bool));
        set("logging.verbosity", self.verbosity.map(|v| Value::from(u64::from(v))));
        set("logging.format", s(&self.logging_format));
        set("netns", s(&self.netns));
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
        Layers { file: self.config.clone(), env: None, flags: self.to_map() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "-v",
            "4",
        ])
        .unwrap();
        let m = Value::Object(cli.flags.to_map());
        assert_eq!(m["mode"], "iptables");
        assert_eq!(m["syncPeriod"], "10s");
        assert_eq!(m["minSyncPeriod"], "2s");
        assert_eq!(m["masqueradeAll"], true);
        assert_eq!(m["logging"]["verbosity"], 4);
        assert_eq!(m["nodePortAddresses"], "10.0.0.0/8,192.168.0.0/16");
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
    fn masquerade_all_false() {
        let cli = Cli::try_parse_from(["switchyard", "--masquerade-all=false"]).unwrap();
        assert_eq!(cli.flags.masquerade_all, Some(false));
    }
}
