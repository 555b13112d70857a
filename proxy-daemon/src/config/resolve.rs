//! From the decoded [`Document`] to the [`Config`] the daemon runs with:
//! kube-proxy's defaulting (`pkg/proxy/apis/config/v1alpha1/defaults.go`,
//! the v1alpha1 conversion, `platformApplyDefaults`), then its validation
//! (`pkg/proxy/apis/config/validation`), every problem collected; then
//! switchyard's own fields. Messages for what kube-proxy rejects use
//! kube-proxy's reason, under the v1alpha1 field path the value came from.
//!
//! Also writes the effective configuration back as a v1alpha1 document
//! ([`Config::kube_proxy`]), as `kube-proxy --write-config-to` does, so the
//! two can be compared field by field (`tests/kube_proxy_compat.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use proxy_core::{FamilySet, GoDuration, IpFamily, Registry};
use serde_json::{Map, Value, json};

use super::file::{Document, List, Text};
use super::*;

/// kube-proxy's defaults (`defaults.go`, `ports.go`, `qos.go`).
pub const HEALTHZ_PORT: u16 = 10256;
pub const METRICS_PORT: u16 = 10249;
pub const DEFAULT_OOM_SCORE_ADJ: i32 = -999;
pub const DEFAULT_MASQUERADE_BIT: i64 = 14;
pub const DEFAULT_CONNTRACK_MAX_PER_CORE: i64 = 32 * 1024;
pub const DEFAULT_CONNTRACK_MIN: i64 = 128 * 1024;
pub const DEFAULT_CONNTRACK_TCP_ESTABLISHED: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_CONNTRACK_TCP_CLOSE_WAIT: Duration = Duration::from_secs(3600);
pub const DEFAULT_CONFIG_SYNC_PERIOD: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
pub const DEFAULT_QPS: f64 = 5.0;
pub const DEFAULT_BURST: i64 = 10;
pub const DEFAULT_FLUSH_FREQUENCY: Duration = Duration::from_secs(5);
/// The one value `showHiddenMetricsForVersion` may have: the minor version
/// before the kube-proxy release switchyard matches.
pub const SHOW_HIDDEN_METRICS_VERSION: &str = "1.36";

/// detectLocalMode values kube-proxy knows (validation.go).
const LOCAL_MODES: &[&str] = &["ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix", ""];

/// Collects problems and warnings with their origin.
pub(super) struct Collector<'a> {
    pub problems: Vec<ConfigProblem>,
    pub warnings: Vec<ConfigWarning>,
    pub origin: &'a dyn Fn(&str) -> Option<String>,
}

impl Collector<'_> {
    pub fn problem(&mut self, path: &str, message: impl Into<String>) {
        let origin = (self.origin)(path);
        self.problems.push(ConfigProblem { path: path.to_string(), message: message.into(), origin });
    }

    pub fn warn(&mut self, path: &str, message: impl Into<String>) {
        let origin = (self.origin)(path);
        self.warnings.push(ConfigWarning { path: path.to_string(), message: message.into(), origin });
    }
}

fn text(t: &Option<Text>) -> &str {
    t.as_ref().map_or("", |t| t.0.as_str())
}

fn dur(d: Option<GoDuration>) -> GoDuration {
    d.unwrap_or(GoDuration::ZERO)
}

/// A zero (or absent) duration takes the default, as kube-proxy's defaulting does.
fn or_default(d: Option<GoDuration>, default: Duration) -> GoDuration {
    match d {
        Some(d) if !d.is_zero() => d,
        _ => GoDuration::from_std(default),
    }
}

/// `net.SplitHostPort` then kube-proxy's checks (`validateHostPort`); port 0
/// is accepted as switchyard's extension (a free port, for labs).
pub fn parse_bind_address(s: &str) -> Result<SocketAddr, String> {
    let (host, port) = split_host_port(s).ok_or_else(|| format!("{s:?}: must be IP:port"))?;
    let ip: IpAddr = parse_ip_sloppy(host).ok_or_else(|| format!("{host:?}: must be a valid IP"))?;
    let port: u16 = port.parse().map_err(|_| format!("{port:?}: must be a valid port"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Go's `net.SplitHostPort` for the shapes kube-proxy accepts (`1.2.3.4:80`, `[::1]:80`, `:80`).
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = s.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host, port))
}

/// Go's `ParseIPSloppy`: also IPv4 with leading zeros (read as decimal);
/// an empty host (`:10256`) is every address.
fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if s.is_empty() {
        return Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    {
        let octets: Vec<u8> = parts.iter().filter_map(|p| p.parse().ok()).collect();
        if let [a, b, c, d] = octets[..] {
            return Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        }
    }
    None
}

fn parse_cidr_sloppy(s: &str) -> Option<IpNet> {
    let (ip, bits) = s.split_once('/')?;
    let ip = parse_ip_sloppy(ip).filter(|_| !ip.is_empty())?;
    let bits: u8 = bits.parse().ok()?;
    IpNet::new(ip, bits).ok()
}

/// kube-proxy's `AppendPortIfNeeded`: an IP without a port gets the default one.
fn append_port_if_needed(addr: &str, port: u16) -> String {
    if split_host_port(addr).is_some() {
        return addr.to_string();
    }
    match addr.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => addr.to_string(),
    }
}

/// Reads the whole document. `sections` are the backend sections found
/// outside the typed document (plugin, ebpf, ...), by mode name.
pub(super) fn resolve(
    doc: &Document,
    raw: &Value,
    flavour: FileFlavour,
    registry: &Registry,
    c: &mut Collector<'_>,
) -> Config {
    let mut cfg = Config::defaults();
    cfg.flavour = flavour;

    // mode: blank means iptables (platformApplyDefaults).
    let mode = text(&doc.mode).to_string();
    cfg.mode = if mode.is_empty() { DEFAULT_MODE.to_string() } else { mode };
    if registry.get(&cfg.mode).is_err() {
        if cfg.mode == "nftables" {
            cfg.unavailable = Some(
                "proxy mode nftables is not built yet in switchyard (the nftables backend is planned); \
                 use iptables, ipvs or ebpf meanwhile"
                    .into(),
            );
        } else {
            // kube-proxy's words, then what this build adds.
            let extra: Vec<String> = registry
                .modes()
                .into_iter()
                .filter(|m| !["iptables", "ipvs", "nftables"].contains(&m.as_str()))
                .collect();
            let also = if extra.is_empty() {
                String::new()
            } else {
                format!(", or a mode of this build: {}", extra.join(", "))
            };
            c.problem(
                "mode",
                format!("{:?}: must be iptables, ipvs, nftables or blank (blank means iptables){also}", cfg.mode),
            );
        }
    }
    let section_of_mode = match cfg.mode.as_str() {
        "ipvs" => "ipvs",
        "nftables" => "nftables",
        _ => "iptables",
    };

    // bindAddress, and the families of the default health and metrics addresses.
    let bind = text(&doc.bind_address);
    let bind = if bind.is_empty() { "0.0.0.0" } else { bind };
    let bind_ip = parse_ip_sloppy(bind);
    match bind_ip {
        None => c.problem("bindAddress", format!("{bind:?}: not a valid textual representation of an IP address")),
        Some(ip) if !ip.is_unspecified() => cfg.bind_address = Some(ip),
        Some(_) => {}
    }
    let v6 = matches!(bind_ip, Some(IpAddr::V6(_)));
    let (healthz_host, metrics_host): (IpAddr, IpAddr) = if v6 {
        (Ipv6Addr::UNSPECIFIED.into(), Ipv6Addr::LOCALHOST.into())
    } else {
        (Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::LOCALHOST.into())
    };
    // A file's address may omit the port (kube-proxy's conversion appends
    // the default); a flag's may not (kube-proxy refuses it).
    let from_flag = |key: &str| (c.origin)(key).as_deref() == Some("command line");
    let healthz = match text(&doc.healthz_bind_address) {
        "" => SocketAddr::new(healthz_host, HEALTHZ_PORT).to_string(),
        a if from_flag("healthzBindAddress") => a.to_string(),
        a => append_port_if_needed(a, HEALTHZ_PORT),
    };
    let metrics = match text(&doc.metrics_bind_address) {
        "" => SocketAddr::new(metrics_host, METRICS_PORT).to_string(),
        a if from_flag("metricsBindAddress") => a.to_string(),
        a => append_port_if_needed(a, METRICS_PORT),
    };
    // The deprecated --healthz-port/--metrics-port: 0 turns the server off.
    let healthz = port_override(healthz, doc.healthz_port, "healthzPort", c);
    let metrics = port_override(metrics, doc.metrics_port, "metricsPort", c);
    cfg.healthz_bind_address = bind_or_problem(&healthz, "healthzBindAddress", c);
    cfg.metrics_bind_address = bind_or_problem(&metrics, "metricsBindAddress", c);
    cfg.bind_address_hard_fail = doc.bind_address_hard_fail.unwrap_or(false);

    cfg.hostname_override = match &doc.hostname_override {
        Some(Text(h)) if !h.is_empty() => {
            let h = h.trim().to_lowercase();
            if h.is_empty() {
                c.problem("hostnameOverride", "empty hostname-override is invalid");
                None
            } else {
                Some(h)
            }
        }
        _ => None,
    };

    // Sync periods: the mode's section (kube-proxy's v1alpha1 conversion),
    // defaults (30s, 1s), then ours.
    let ipt = doc.iptables.clone().unwrap_or_default();
    let ipvs = doc.ipvs.clone().unwrap_or_default();
    let nft = doc.nftables.clone().unwrap_or_default();
    // Without kube-proxy's file, kube-proxy starts from its defaults for
    // mode "" (iptables': 30s, 1s) and its flags change them: the ipvs
    // flags in ipvs mode, the iptables flags in any other (nftables too).
    // From a file, the mode's own section counts, and ipvs has no
    // minSyncPeriod default.
    let flags_only = flavour != FileFlavour::KubeProxy && (c.origin)("mode").as_deref() == Some("command line");
    let (sync, min_sync, min_default) = match section_of_mode {
        "ipvs" if flags_only => (ipvs.sync_period, ipvs.min_sync_period, DEFAULT_MIN_SYNC_PERIOD),
        "ipvs" => (ipvs.sync_period, ipvs.min_sync_period, Duration::ZERO),
        "nftables" if flags_only => (ipt.sync_period, ipt.min_sync_period, DEFAULT_MIN_SYNC_PERIOD),
        "nftables" => (nft.sync_period, nft.min_sync_period, DEFAULT_MIN_SYNC_PERIOD),
        _ => (ipt.sync_period, ipt.min_sync_period, DEFAULT_MIN_SYNC_PERIOD),
    };
    let (sync_path, sync) = match doc.sync_period.filter(|d| !d.is_zero()) {
        Some(d) => ("syncPeriod".to_string(), d),
        None => (format!("{section_of_mode}.syncPeriod"), or_default(sync, DEFAULT_SYNC_PERIOD)),
    };
    let (min_path, min_sync) = match doc.min_sync_period.filter(|d| !d.is_zero()) {
        Some(d) => ("minSyncPeriod".to_string(), d),
        None => (format!("{section_of_mode}.minSyncPeriod"), or_default(min_sync, min_default)),
    };
    if sync.as_nanos() <= 0 {
        c.problem(&sync_path, format!("\"{sync}\": must be greater than 0"));
    }
    if min_sync.is_negative() {
        c.problem(&min_path, format!("\"{min_sync}\": must be greater than or equal to 0"));
    }
    if min_sync > sync && !sync.is_negative() {
        c.problem(&sync_path, format!("\"{min_sync}\": must be greater than or equal to {min_path}"));
    }
    cfg.sync_period = sync.to_std().unwrap_or(DEFAULT_SYNC_PERIOD);
    cfg.min_sync_period = min_sync.to_std().unwrap_or(DEFAULT_MIN_SYNC_PERIOD);

    // masqueradeAll: ours, else the mode's section (nftables), else iptables'.
    let section_masq = if section_of_mode == "nftables" { nft.masquerade_all } else { ipt.masquerade_all };
    cfg.masquerade_all = doc.masquerade_all.or(section_masq).unwrap_or(false);

    // Masquerade bits: iptables' always validated, nftables' in nftables mode.
    let ipt_bit = ipt.masquerade_bit.unwrap_or(DEFAULT_MASQUERADE_BIT);
    if !(0..=31).contains(&ipt_bit) {
        c.problem("iptables.masqueradeBit", format!("{ipt_bit}: must be within the range [0, 31]"));
    }
    let nft_bit = nft.masquerade_bit.unwrap_or(DEFAULT_MASQUERADE_BIT);
    if section_of_mode == "nftables" && !(0..=31).contains(&nft_bit) {
        c.problem("nftables.masqueradeBit", format!("{nft_bit}: must be within the range [0, 31]"));
    }

    // IPVS settings: validated in ipvs mode.
    if cfg.mode == "ipvs" {
        for (key, t) in [
            ("tcpTimeout", ipvs.tcp_timeout),
            ("tcpFinTimeout", ipvs.tcp_fin_timeout),
            ("udpTimeout", ipvs.udp_timeout),
        ] {
            if let Some(t) = t.filter(|t| t.0.is_negative()) {
                c.problem(&format!("ipvs.{key}"), format!("\"{}\": must be greater than or equal to 0", t.0));
            }
        }
        for (i, cidr) in ipvs.exclude_cidrs.clone().unwrap_or_default().0.iter().enumerate() {
            if parse_cidr_sloppy(cidr).is_none() {
                c.problem(&format!("ipvs.excludeCIDRs[{i}]"), format!("{cidr:?}: must be a valid CIDR"));
            }
        }
    }

    // detectLocalMode (blank: ClusterCIDR) and what it needs.
    let local_mode = text(&doc.detect_local_mode);
    let detect = doc.detect_local.clone().unwrap_or_default();
    let cluster_cidr = doc.cluster_cidr.clone().unwrap_or_default().0;
    if !LOCAL_MODES.contains(&local_mode) {
        c.problem(
            "detectLocalMode",
            format!(
                "Unsupported value: {local_mode:?}: supported values: {}",
                LOCAL_MODES.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", ")
            ),
        );
    }
    cfg.local_detection = match local_mode {
        "" | "ClusterCIDR" => {
            cfg.cluster_cidrs = cluster_cidrs(&cluster_cidr, c);
            LocalDetection::ClusterCidr
        }
        "NodeCIDR" => LocalDetection::NodeCidr,
        "BridgeInterface" => {
            let name = text(&detect.bridge_interface).to_string();
            if name.is_empty() {
                c.problem("detectLocal.bridgeInterface", "\"\": must not be empty");
            }
            LocalDetection::BridgeInterface(name)
        }
        "InterfaceNamePrefix" => {
            let prefix = text(&detect.interface_name_prefix).to_string();
            if prefix.is_empty() {
                c.problem("detectLocal.interfaceNamePrefix", "\"\": must not be empty");
            }
            LocalDetection::InterfaceNamePrefix(prefix)
        }
        _ => LocalDetection::ClusterCidr,
    };
    if let LocalDetection::BridgeInterface(_) | LocalDetection::InterfaceNamePrefix(_) = &cfg.local_detection
        && cfg.unavailable.is_none()
    {
        cfg.unavailable = Some(format!(
            "detectLocalMode {local_mode} is not implemented in switchyard: it tells pod traffic apart by \
             source CIDR only (ClusterCIDR, or NodeCIDR from the Node's spec.podCIDRs)"
        ));
    }

    // nodePortAddresses: CIDRs and the keywords primary, localhost, all.
    let npa = doc.node_port_addresses.clone().unwrap_or_default().0;
    cfg.node_port_addresses = node_port_spec(&npa, c);
    if npa.is_empty() && cfg.mode == "nftables" {
        cfg.node_port_addresses.primary = true;
    }

    // conntrack (applied by the daemon as kube-proxy does; conntrack.rs).
    let ct = doc.conntrack.clone().unwrap_or_default();
    let max_per_core = ct.max_per_core.unwrap_or(DEFAULT_CONNTRACK_MAX_PER_CORE);
    let min = ct.min.unwrap_or(DEFAULT_CONNTRACK_MIN);
    for (key, v) in [("maxPerCore", max_per_core), ("min", min)] {
        if v < 0 {
            c.problem(&format!("conntrack.{key}"), format!("{v}: must be greater than or equal to 0"));
        }
    }
    let est = ct.tcp_established_timeout.unwrap_or(GoDuration::from_std(DEFAULT_CONNTRACK_TCP_ESTABLISHED));
    let close_wait = ct.tcp_close_wait_timeout.unwrap_or(GoDuration::from_std(DEFAULT_CONNTRACK_TCP_CLOSE_WAIT));
    let udp = dur(ct.udp_timeout);
    let udp_stream = dur(ct.udp_stream_timeout);
    for (key, d) in [
        ("tcpEstablishedTimeout", est),
        ("tcpCloseWaitTimeout", close_wait),
        ("udpTimeout", udp),
        ("udpStreamTimeout", udp_stream),
    ] {
        if d.is_negative() {
            c.problem(&format!("conntrack.{key}"), format!("\"{d}\": must be greater than or equal to 0"));
        }
    }
    cfg.conntrack = ConntrackConfig {
        max_per_core: max_per_core.clamp(0, i64::from(i32::MAX)) as u32,
        min: min.clamp(0, i64::from(i32::MAX)) as u32,
        tcp_established_timeout: est.to_std().unwrap_or_default(),
        tcp_close_wait_timeout: close_wait.to_std().unwrap_or_default(),
        tcp_be_liberal: ct.tcp_be_liberal.unwrap_or(false),
        udp_timeout: udp.to_std().unwrap_or_default(),
        udp_stream_timeout: udp_stream.to_std().unwrap_or_default(),
    };

    let oom = doc.oom_score_adj.unwrap_or(i64::from(DEFAULT_OOM_SCORE_ADJ));
    if !(-1000..=1000).contains(&oom) {
        c.problem("oomScoreAdj", format!("{oom}: must be within the range [-1000, 1000]"));
    }
    cfg.oom_score_adj = oom.clamp(-1000, 1000) as i32;

    let config_sync = or_default(doc.config_sync_period, DEFAULT_CONFIG_SYNC_PERIOD);
    if config_sync.as_nanos() <= 0 {
        c.problem("configSyncPeriod", format!("\"{config_sync}\": must be greater than 0"));
    } else if config_sync != GoDuration::from_std(DEFAULT_CONFIG_SYNC_PERIOD) {
        c.warn(
            "configSyncPeriod",
            "has no effect: switchyard's watches need no periodic re-list (every syncPeriod is a full sync)",
        );
    }

    // clientConnection.
    let cc = doc.client_connection.clone().unwrap_or_default();
    cfg.kubeconfig = Some(text(&cc.kubeconfig)).filter(|s| !s.is_empty()).map(PathBuf::from);
    let burst = cc.burst.filter(|b| *b != 0).unwrap_or(DEFAULT_BURST);
    if burst < 0 {
        c.problem("clientConnection.burst", format!("{burst}: must be greater than or equal to 0"));
    }
    let qps = cc.qps.filter(|q| *q != 0.0).unwrap_or(DEFAULT_QPS);
    let content_type = Some(text(&cc.content_type)).filter(|s| !s.is_empty()).unwrap_or(DEFAULT_CONTENT_TYPE);
    if !["application/json", DEFAULT_CONTENT_TYPE].contains(&content_type) {
        c.warn(
            "clientConnection.contentType",
            format!("{content_type:?}: switchyard always speaks application/json to the API server"),
        );
    }
    if !text(&cc.accept_content_types).is_empty() {
        c.warn("clientConnection.acceptContentTypes", "has no effect: switchyard always accepts application/json");
    }
    cfg.client = ClientSettings { qps, burst: burst.clamp(0, i64::from(i32::MAX)) as u32 };
    cfg.master = Some(text(&doc.master).to_string()).filter(|s| !s.is_empty());

    // logging.
    let lg = doc.logging.clone().unwrap_or_default();
    match text(&lg.format) {
        "" | "text" => cfg.log_format = LogFormat::Text,
        "json" => cfg.log_format = LogFormat::Json,
        other => c.problem("logging.format", format!("{other:?}: Unsupported log format")),
    }
    let verbosity = lg.verbosity.unwrap_or(0);
    if !(0..=i64::from(i32::MAX)).contains(&verbosity) {
        c.problem("logging.verbosity", format!("{verbosity}: Must be <= {}", i32::MAX));
    }
    cfg.verbosity = verbosity.clamp(0, 255) as u8;
    let flush = lg.flush_frequency.map(|f| f.0).filter(|f| !f.is_zero());
    let flush = flush.unwrap_or(GoDuration::from_std(DEFAULT_FLUSH_FREQUENCY));
    if flush.is_negative() {
        c.problem("logging.flushFrequency", format!("\"{flush}\": Must be greater than zero"));
    }
    let vmodule = lg.vmodule.clone().unwrap_or_default();
    if !vmodule.is_empty() {
        if cfg.log_format != LogFormat::Text {
            c.problem("logging.vmodule", "Forbidden: Only supported for text log format");
        }
        for (i, item) in vmodule.iter().enumerate() {
            let pattern = text(&item.file_pattern);
            if pattern.is_empty() {
                c.problem(&format!("logging.vmodule[{i}]"), "Required value: File pattern must not be empty");
            } else if pattern.contains(['=', ',']) {
                c.problem(
                    &format!("logging.vmodule[{i}]"),
                    format!("{pattern:?}: File pattern must not contain equal sign or comma"),
                );
            }
        }
        c.warn("logging.vmodule", "has no effect: Go file patterns name nothing in switchyard (SWITCHYARD_LOG takes a tracing filter per module)");
    }
    let options = lg.options.clone().unwrap_or_default();
    for (name, o) in [("json", options.json.clone()), ("text", options.text.clone())] {
        let o = o.unwrap_or_default();
        // LoggingAlphaOptions is off by default in kube-proxy, so these are refused.
        if o.split_stream == Some(true) {
            c.problem(
                &format!("logging.options.{name}.splitStream"),
                "Forbidden: Feature LoggingAlphaOptions is disabled",
            );
        }
        if o.info_buffer_size.as_ref().is_some_and(|v| !quantity_is_zero(v)) {
            c.problem(
                &format!("logging.options.{name}.infoBufferSize"),
                "Forbidden: Feature LoggingAlphaOptions is disabled",
            );
        }
    }

    // Accepted, with a warning: what cannot mean anything here.
    if let Some(gates) = doc.feature_gates.as_ref().filter(|g| !g.is_empty()) {
        let list: Vec<String> = gates.iter().map(|(k, v)| format!("{k}={v}")).collect();
        c.warn("featureGates", format!("{}: switchyard has no feature gates; these have no effect", list.join(",")));
    }
    if doc.enable_profiling == Some(true) {
        c.warn("enableProfiling", "has no effect: switchyard serves no /debug/pprof (use perf or the tokio console)");
    }
    let hidden = text(&doc.show_hidden_metrics_for_version);
    if !hidden.is_empty() {
        if hidden == SHOW_HIDDEN_METRICS_VERSION {
            c.warn("showHiddenMetricsForVersion", "has no effect: switchyard hides no deprecated metric");
        } else {
            c.problem(
                "showHiddenMetricsForVersion",
                format!(
                    "{hidden:?}: must be omitted or have the value '{SHOW_HIDDEN_METRICS_VERSION}'; \
                     only the previous minor version is allowed"
                ),
            );
        }
    }
    if doc.windows_run_as_service == Some(true) {
        c.warn("windowsRunAsService", "has no effect: Windows only");
    }
    if let Some(w) = &doc.winkernel {
        let set = !text(&w.network_name).is_empty()
            || !text(&w.source_vip).is_empty()
            || !text(&w.root_hns_endpoint_name).is_empty()
            || w.enable_dsr == Some(true)
            || w.forward_health_check_vip == Some(true);
        if set {
            c.warn("winkernel", "has no effect: Windows only");
        }
    }
    if !text(&doc.port_range).is_empty() {
        c.warn("portRange", "has no effect (kube-proxy ignores it too since its userspace mode was removed)");
    }

    // switchyard's own.
    if let Some(s) = &doc.source {
        match SourceSpec::parse(&s.0) {
            Ok(spec) => cfg.source = spec,
            Err(e) => c.problem("source", e),
        }
    }
    if let Some(List(list)) = &doc.ip_families {
        let mut fams = FamilySet { ipv4: false, ipv6: false };
        for (i, f) in list.iter().enumerate() {
            match f.as_str() {
                "IPv4" => fams.ipv4 = true,
                "IPv6" => fams.ipv6 = true,
                other => c.problem(&format!("ipFamilies[{i}]"), format!("{other:?} is not IPv4 or IPv6")),
            }
        }
        if fams.ipv4 || fams.ipv6 {
            cfg.ip_families = Some(fams);
        }
    }
    cfg.netns = Some(text(&doc.netns))
        .filter(|s| !s.is_empty())
        .map(|s| if s.contains('/') { PathBuf::from(s) } else { PathBuf::from("/run/netns").join(s) });
    if let Some(d) = doc.file_poll_interval.filter(|d| !d.is_zero()) {
        match d.to_std() {
            Some(d) => cfg.file_poll_interval = d,
            None => c.problem("filePollInterval", format!("{d}: must be greater than 0")),
        }
    }
    cfg.enable_debug_handlers = doc.enable_debug_handlers.unwrap_or(false);
    cfg.remove_kube_proxy_leftovers = doc.remove_kube_proxy_leftovers.unwrap_or(false);
    cfg.service_proxy_name = Some(text(&doc.service_proxy_name).to_string()).filter(|s| !s.is_empty());

    // The effective configuration in kube-proxy's own words.
    cfg.kube_proxy = write_v1alpha1(&V1alpha1 {
        doc,
        raw,
        mode: &cfg.mode,
        bind,
        healthz: &healthz,
        metrics: &metrics,
        sync,
        min_sync,
        masquerade_all: cfg.masquerade_all,
        ipt_bit,
        nft_bit,
        local_mode: if local_mode.is_empty() { "ClusterCIDR" } else { local_mode },
        node_ports: &npa,
        conntrack: (max_per_core, min, est, close_wait, udp, udp_stream),
        oom,
        config_sync,
        client: (qps, burst, content_type),
        flush,
        verbosity,
        own_from_flags: OWN_KEYS.iter().copied().filter(|k| (c.origin)(k).as_deref() == Some("command line")).collect(),
    });
    cfg
}

fn quantity_is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse::<f64>() == Ok(0.0),
        _ => false,
    }
}

fn port_override(addr: String, port: Option<i64>, key: &str, c: &mut Collector<'_>) -> String {
    let Some(port) = port else { return addr };
    if port == 0 {
        return String::new();
    }
    let Ok(port) = u16::try_from(port) else {
        c.problem(key, format!("{port}: must be a valid port"));
        return addr;
    };
    match split_host_port(&addr) {
        Some((host, _)) if host.contains(':') => format!("[{host}]:{port}"),
        Some((host, _)) => format!("{host}:{port}"),
        None => addr,
    }
}

/// `None` when the server is off (a deprecated port flag of 0).
fn bind_or_problem(addr: &str, key: &str, c: &mut Collector<'_>) -> Option<SocketAddr> {
    if addr.is_empty() {
        return None;
    }
    match parse_bind_address(addr) {
        Ok(a) => Some(a),
        Err(e) => {
            c.problem(key, e);
            None
        }
    }
}

/// `clusterCIDR`: one CIDR, or a dual-stack pair (validateDualStackCIDRStrings).
fn cluster_cidrs(list: &[String], c: &mut Collector<'_>) -> Vec<IpNet> {
    const PAIR: &str =
        "must be a either a single CIDR or dual-stack pair of CIDRs (e.g. [10.100.0.0/16, fde4:8dba:82e1::/48]";
    if list.len() > 2 {
        c.problem("clusterCIDR", format!("{list:?}: {PAIR}"));
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match parse_cidr_sloppy(s) {
            Some(n) => out.push(n.trunc()),
            None => c.problem(
                &format!("clusterCIDR[{i}]"),
                format!("{s:?}: must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)"),
            ),
        }
    }
    if let [a, b] = &out[..]
        && IpFamily::of(&a.addr()) == IpFamily::of(&b.addr())
    {
        c.problem("clusterCIDR", format!("{list:?}: {PAIR}"));
    }
    out
}

fn node_port_spec(list: &[String], c: &mut Collector<'_>) -> NodePortSpec {
    let mut spec = NodePortSpec::default();
    let mut seen = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let path = format!("nodePortAddresses[{i}]");
        match s.as_str() {
            "primary" | "localhost" | "all" => {
                if seen.contains(s) {
                    c.problem(&path, format!("Duplicate value: {s:?}"));
                }
                seen.push(s.clone());
                match s.as_str() {
                    "primary" => spec.primary = true,
                    "localhost" => spec.localhost = true,
                    _ => spec.all = true,
                }
            }
            _ => match parse_cidr_sloppy(s) {
                Some(n) => spec.cidrs.push(n.trunc()),
                None => c.problem(
                    &path,
                    format!("{s:?}: must be a valid CIDR or one of the keywords 'primary', 'localhost', 'all'"),
                ),
            },
        }
    }
    spec
}

/// What [`write_v1alpha1`] needs besides the document.
struct V1alpha1<'a> {
    doc: &'a Document,
    raw: &'a Value,
    mode: &'a str,
    bind: &'a str,
    healthz: &'a str,
    metrics: &'a str,
    sync: GoDuration,
    min_sync: GoDuration,
    masquerade_all: bool,
    ipt_bit: i64,
    nft_bit: i64,
    local_mode: &'a str,
    node_ports: &'a [String],
    conntrack: (i64, i64, GoDuration, GoDuration, GoDuration, GoDuration),
    oom: i64,
    config_sync: GoDuration,
    client: (f64, i64, &'a str),
    flush: GoDuration,
    verbosity: i64,
    /// switchyard's own keys whose value came from a flag.
    own_from_flags: Vec<&'static str>,
}

fn num(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 1e15 { json!(f as i64) } else { json!(f) }
}

/// The effective configuration as kube-proxy writes it with
/// `--write-config-to` (its defaults applied, sync periods in the mode's
/// section), plus switchyard's own fields when they are set.
fn write_v1alpha1(w: &V1alpha1<'_>) -> Value {
    let d = w.doc;
    let zero = GoDuration::ZERO.to_string();
    let period = |section: &str, value: GoDuration| {
        let mode_section = match w.mode {
            "ipvs" => "ipvs",
            "nftables" => "nftables",
            _ => "iptables",
        };
        if section == mode_section { value.to_string() } else { zero.clone() }
    };
    let ipt = d.iptables.clone().unwrap_or_default();
    let ipvs = d.ipvs.clone().unwrap_or_default();
    let timeout = |t: Option<super::file::IpvsTimeout>| t.map_or(GoDuration::ZERO, |t| t.0).to_string();
    let (max_per_core, min, est, close_wait, udp, udp_stream) = w.conntrack;
    let lg = d.logging.clone().unwrap_or_default();
    let options = lg.options.clone().unwrap_or_default();
    let buffer = |o: &Option<super::file::FormatOptions>| {
        o.as_ref().and_then(|o| o.info_buffer_size.clone()).filter(|v| !v.is_null()).unwrap_or(json!("0"))
    };
    let mut logging = json!({
        "flushFrequency": w.flush.to_string(),
        "format": match text(&lg.format) { "" => "text", f => f },
        "options": {"json": {"infoBufferSize": buffer(&options.json)}, "text": {"infoBufferSize": buffer(&options.text)}},
        "verbosity": w.verbosity,
    });
    if let Some(v) = lg.vmodule.as_ref().filter(|v| !v.is_empty()) {
        logging["vmodule"] = serde_json::to_value(v).unwrap_or(Value::Null);
    }
    let winkernel = d.winkernel.clone().unwrap_or_default();
    let detect = d.detect_local.clone().unwrap_or_default();
    let list_or_null = |l: &[String]| if l.is_empty() { Value::Null } else { json!(l) };
    let exclude = ipvs.exclude_cidrs.clone().map(|l| l.0).unwrap_or_default();
    let mut out = json!({
        "apiVersion": KUBE_PROXY_API_VERSION,
        "kind": KUBE_PROXY_KIND,
        "bindAddress": w.bind,
        "bindAddressHardFail": d.bind_address_hard_fail.unwrap_or(false),
        "clientConnection": {
            "acceptContentTypes": text(&d.client_connection.as_ref().and_then(|c| c.accept_content_types.clone())),
            "burst": w.client.1,
            "contentType": w.client.2,
            "kubeconfig": text(&d.client_connection.as_ref().and_then(|c| c.kubeconfig.clone())),
            "qps": num(w.client.0),
        },
        "clusterCIDR": d.cluster_cidr.as_ref().map(|l| l.0.join(",")).unwrap_or_default(),
        "configSyncPeriod": w.config_sync.to_string(),
        "conntrack": {
            "maxPerCore": max_per_core,
            "min": min,
            "tcpBeLiberal": d.conntrack.as_ref().and_then(|c| c.tcp_be_liberal).unwrap_or(false),
            "tcpCloseWaitTimeout": close_wait.to_string(),
            "tcpEstablishedTimeout": est.to_string(),
            "udpStreamTimeout": udp_stream.to_string(),
            "udpTimeout": udp.to_string(),
        },
        "detectLocal": {
            "bridgeInterface": text(&detect.bridge_interface),
            "interfaceNamePrefix": text(&detect.interface_name_prefix),
        },
        "detectLocalMode": w.local_mode,
        "enableProfiling": d.enable_profiling.unwrap_or(false),
        "healthzBindAddress": w.healthz,
        "hostnameOverride": text(&d.hostname_override),
        "iptables": {
            "localhostNodePorts": ipt.localhost_node_ports.unwrap_or(true),
            "masqueradeAll": w.masquerade_all && w.mode != "nftables",
            "masqueradeBit": w.ipt_bit,
            "minSyncPeriod": period("iptables", w.min_sync),
            "syncPeriod": period("iptables", w.sync),
        },
        "ipvs": {
            "excludeCIDRs": list_or_null(&exclude),
            "minSyncPeriod": period("ipvs", w.min_sync),
            "scheduler": text(&ipvs.scheduler),
            "strictARP": ipvs.strict_arp.unwrap_or(false),
            "syncPeriod": period("ipvs", w.sync),
            "tcpFinTimeout": timeout(ipvs.tcp_fin_timeout),
            "tcpTimeout": timeout(ipvs.tcp_timeout),
            "udpTimeout": timeout(ipvs.udp_timeout),
        },
        "logging": logging,
        "metricsBindAddress": w.metrics,
        "mode": w.mode,
        "nftables": {
            "masqueradeAll": w.masquerade_all && w.mode == "nftables",
            "masqueradeBit": w.nft_bit,
            "minSyncPeriod": period("nftables", w.min_sync),
            "syncPeriod": period("nftables", w.sync),
        },
        "nodePortAddresses": if w.node_ports.is_empty() && w.mode == "nftables" { json!(["primary"]) } else { list_or_null(w.node_ports) },
        "oomScoreAdj": w.oom,
        "portRange": text(&d.port_range),
        "showHiddenMetricsForVersion": text(&d.show_hidden_metrics_for_version),
        "winkernel": {
            "enableDSR": winkernel.enable_dsr.unwrap_or(false),
            "forwardHealthCheckVip": winkernel.forward_health_check_vip.unwrap_or(false),
            "networkName": text(&winkernel.network_name),
            "rootHnsEndpointName": text(&winkernel.root_hns_endpoint_name),
            "sourceVip": text(&winkernel.source_vip),
        },
    });
    if let Some(gates) = d.feature_gates.as_ref().filter(|g| !g.is_empty()) {
        out["featureGates"] = json!(gates);
    }
    if d.windows_run_as_service == Some(true) {
        out["windowsRunAsService"] = json!(true);
    }
    // switchyard's own fields, when a file or the environment set them, so
    // the file reads back the same here (a flag is not a configuration
    // field: kube-proxy writes none of `--master`, say).
    if let Value::Object(raw) = w.raw {
        for key in OWN_KEYS.iter().filter(|k| !w.own_from_flags.contains(k)) {
            if let Some(v) = raw.get(*key).filter(|v| !v.is_null()) {
                out[*key] = v.clone();
            }
        }
    }
    out
}

/// switchyard's own top-level keys (not in kube-proxy's v1alpha1).
pub const OWN_KEYS: &[&str] = &[
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

/// kube-proxy's mode sections, handed to the backend of that name when one is registered.
pub const KUBE_PROXY_SECTIONS: &[&str] = &["iptables", "ipvs", "nftables", "winkernel"];

/// The keys of kube-proxy's sections the daemon consumes itself; the
/// backend receives the rest.
pub const GENERIC_SECTION_KEYS: &[&str] = &["syncPeriod", "minSyncPeriod", "masqueradeAll"];

/// A backend section as the backend receives it: nulls (kube-proxy's
/// "unset") and the generic keys removed.
pub fn backend_section(v: &Value) -> Value {
    let mut v = v.clone();
    strip_nulls(&mut v);
    if let Value::Object(m) = &mut v {
        for k in GENERIC_SECTION_KEYS {
            m.remove(*k);
        }
    }
    if v.is_null() { Value::Object(Map::new()) } else { v }
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, v| !v.is_null());
        m.values_mut().for_each(strip_nulls);
    }
}
