//! What switchyard does with each of kube-proxy's flags, configuration
//! fields and metrics: the same, accepted with a warning, or different (and
//! why). The tables are data: `tests/kube_proxy_compat.rs` checks them
//! against the reference kube-proxy (its `--help`, its `--write-config-to`
//! output, its `/metrics`) and renders `docs/compatibility.md` from them.

use std::fmt::Write as _;

/// How switchyard treats one kube-proxy item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Accepted, and means what it means in kube-proxy.
    Same,
    /// Accepted (and validated as kube-proxy does); has no effect, and a
    /// warning naming it is logged once at start when it is set.
    Warned(&'static str),
    /// Accepted, with a different meaning or scope, said here.
    Different(&'static str),
}

impl Support {
    pub fn label(self) -> &'static str {
        match self {
            Support::Same => "same",
            Support::Warned(_) => "warned",
            Support::Different(_) => "different",
        }
    }

    pub fn note(self) -> &'static str {
        match self {
            Support::Same => "",
            Support::Warned(n) | Support::Different(n) => n,
        }
    }
}

/// One field of `KubeProxyConfiguration` v1alpha1 (a leaf path).
#[derive(Clone, Copy, Debug)]
pub struct FieldInfo {
    pub path: &'static str,
    pub support: Support,
}

const fn same(path: &'static str) -> FieldInfo {
    FieldInfo { path, support: Support::Same }
}

const fn warned(path: &'static str, why: &'static str) -> FieldInfo {
    FieldInfo { path, support: Support::Warned(why) }
}

const fn different(path: &'static str, why: &'static str) -> FieldInfo {
    FieldInfo { path, support: Support::Different(why) }
}

const WINDOWS: &str = "Windows only";

/// Every field of kube-proxy's v1alpha1 configuration (`k8s.io/kube-proxy/config/v1alpha1`).
pub const CONFIG_FIELDS: &[FieldInfo] = &[
    same("apiVersion"),
    same("kind"),
    warned("featureGates", "switchyard has no feature gates; unknown names are not refused"),
    same("clientConnection.kubeconfig"),
    warned("clientConnection.acceptContentTypes", "switchyard always accepts application/json"),
    warned(
        "clientConnection.contentType",
        "switchyard always speaks application/json (kube-proxy's default protobuf is accepted silently)",
    ),
    same("clientConnection.qps"),
    same("clientConnection.burst"),
    same("logging.format"),
    warned("logging.flushFrequency", "validated; switchyard writes every line at once"),
    different("logging.verbosity", "tracing levels: 0-1 info, 2-3 one line per sync, 4-5 debug, 6+ trace"),
    warned("logging.vmodule", "Go file patterns name nothing here; SWITCHYARD_LOG takes a tracing filter per module"),
    same("logging.options.json.infoBufferSize"),
    same("logging.options.json.splitStream"),
    same("logging.options.text.infoBufferSize"),
    same("logging.options.text.splitStream"),
    same("hostnameOverride"),
    same("bindAddress"),
    different("healthzBindAddress", "port 0 is accepted (a free port, for labs); kube-proxy refuses it"),
    different("metricsBindAddress", "port 0 is accepted (a free port, for labs); kube-proxy refuses it"),
    same("bindAddressHardFail"),
    warned("enableProfiling", "switchyard serves no /debug/pprof"),
    warned("showHiddenMetricsForVersion", "validated as kube-proxy does; switchyard hides no metric"),
    different(
        "mode",
        "iptables and ipvs as kube-proxy, plus ebpf and plugins; nftables exits 3 until its backend lands",
    ),
    same("iptables.masqueradeBit"),
    same("iptables.masqueradeAll"),
    same("iptables.localhostNodePorts"),
    same("iptables.syncPeriod"),
    same("iptables.minSyncPeriod"),
    same("ipvs.syncPeriod"),
    same("ipvs.minSyncPeriod"),
    same("ipvs.scheduler"),
    different(
        "ipvs.excludeCIDRs",
        "validated and handed to the ipvs backend, which deletes only virtual servers it owns anyway",
    ),
    same("ipvs.strictARP"),
    different("ipvs.tcpTimeout", "also read as a number of seconds (switchyard's earlier spelling)"),
    different("ipvs.tcpFinTimeout", "also read as a number of seconds (switchyard's earlier spelling)"),
    different("ipvs.udpTimeout", "also read as a number of seconds (switchyard's earlier spelling)"),
    same("nftables.masqueradeBit"),
    same("nftables.masqueradeAll"),
    same("nftables.syncPeriod"),
    same("nftables.minSyncPeriod"),
    warned("winkernel.networkName", WINDOWS),
    warned("winkernel.sourceVip", WINDOWS),
    warned("winkernel.enableDSR", WINDOWS),
    warned("winkernel.rootHnsEndpointName", WINDOWS),
    warned("winkernel.forwardHealthCheckVip", WINDOWS),
    different(
        "detectLocalMode",
        "ClusterCIDR and NodeCIDR as kube-proxy; BridgeInterface and InterfaceNamePrefix stop the start with exit 3 (not implemented)",
    ),
    different("detectLocal.bridgeInterface", "validated; its mode is not implemented (exit 3)"),
    different("detectLocal.interfaceNamePrefix", "validated; its mode is not implemented (exit 3)"),
    same("clusterCIDR"),
    same("nodePortAddresses"),
    same("oomScoreAdj"),
    same("conntrack.maxPerCore"),
    same("conntrack.min"),
    same("conntrack.tcpEstablishedTimeout"),
    same("conntrack.tcpCloseWaitTimeout"),
    same("conntrack.tcpBeLiberal"),
    same("conntrack.udpTimeout"),
    same("conntrack.udpStreamTimeout"),
    warned("configSyncPeriod", "validated; switchyard's watches need no periodic re-list"),
    warned("portRange", "kube-proxy ignores it too since its userspace mode was removed"),
    warned("windowsRunAsService", WINDOWS),
];

/// Fields kube-proxy's `--write-config-to` omits when empty (`omitempty`, or unset options).
pub const OMITTED_WHEN_EMPTY: &[&str] = &[
    "featureGates",
    "windowsRunAsService",
    "logging.vmodule",
    "logging.options.json.splitStream",
    "logging.options.text.splitStream",
];

/// One metric kube-proxy exports.
#[derive(Clone, Copy, Debug)]
pub struct MetricInfo {
    pub name: &'static str,
    pub support: Support,
}

/// Every metric kube-proxy v1.37 exports on `/metrics` (besides the Go
/// runtime's `go_*`), and what switchyard exports for it.
pub const METRICS: &[MetricInfo] = &[
    metric("kubeproxy_sync_proxy_rules_duration_seconds", Support::Same),
    metric("kubeproxy_sync_full_proxy_rules_duration_seconds", Support::Same),
    metric("kubeproxy_sync_partial_proxy_rules_duration_seconds", Support::Same),
    metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds", Support::Same),
    metric("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", Support::Same),
    metric("kubeproxy_network_programming_duration_seconds", Support::Same),
    metric("kubeproxy_sync_proxy_rules_endpoint_changes_pending", Support::Same),
    metric("kubeproxy_sync_proxy_rules_endpoint_changes_total", Support::Same),
    metric("kubeproxy_sync_proxy_rules_service_changes_pending", Support::Same),
    metric("kubeproxy_sync_proxy_rules_service_changes_total", Support::Same),
    metric("kubeproxy_sync_proxy_rules_no_local_endpoints_total", Support::Same),
    metric("kubeproxy_proxy_healthz_total", Support::Same),
    metric("kubeproxy_proxy_livez_total", Support::Same),
    metric(
        "kubeproxy_sync_proxy_rules_iptables_total",
        Support::Different("iptables mode; the table label only (no ip_family): one count for both families"),
    ),
    metric(
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
        Support::Different("iptables mode; without the ip_family label"),
    ),
    metric(
        "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
        Support::Different("iptables mode; without the ip_family label"),
    ),
    metric("kubeproxy_sync_proxy_rules_iptables_last", Support::Different("not exported")),
    metric(
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
        Support::Different("not exported: no nftables mode yet"),
    ),
    metric(
        "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
        Support::Different("not exported: no nftables mode yet"),
    ),
    metric("kubeproxy_nftables_localhost_nodeport_listeners", Support::Different("not exported: no nftables mode yet")),
    metric(
        "kubeproxy_nftables_localhost_nodeport_listener_creation_failures_total",
        Support::Different("not exported: no nftables mode yet"),
    ),
    metric("kubeproxy_conntrack_reconciler_sync_duration_seconds", Support::Different("not exported")),
    metric("kubeproxy_conntrack_reconciler_deleted_entries_total", Support::Different("not exported")),
    metric("kubeproxy_sync_proxy_rules_winkernel_lb_create_failures_total", Support::Different("Windows only")),
    metric("kubeproxy_sync_proxy_rules_winkernel_lb_update_failures_total", Support::Different("Windows only")),
    metric("kubeproxy_sync_proxy_rules_winkernel_lb_delete_failures_total", Support::Different("Windows only")),
    metric("process_cpu_seconds_total", Support::Same),
    metric("process_open_fds", Support::Same),
    metric("process_max_fds", Support::Same),
    metric("process_virtual_memory_bytes", Support::Same),
    metric("process_virtual_memory_max_bytes", Support::Same),
    metric("process_resident_memory_bytes", Support::Same),
    metric("process_start_time_seconds", Support::Same),
    metric(
        "process_network_receive_bytes_total",
        Support::Different("not exported (client_golang reads it from /proc/self/net/dev)"),
    ),
    metric(
        "process_network_transmit_bytes_total",
        Support::Different("not exported (client_golang reads it from /proc/self/net/dev)"),
    ),
    metric("rest_client_requests_total", Support::Same),
    metric("rest_client_request_duration_seconds", Support::Same),
    metric(
        "rest_client_*",
        Support::Different("client-go's other rest_client_ metrics (sizes, rate limiter, retries) are not exported"),
    ),
    metric("go_*", Support::Different("Go runtime metrics: nothing to report for a Rust process")),
];

const fn metric(name: &'static str, support: Support) -> MetricInfo {
    MetricInfo { name, support }
}

/// Renders `docs/compatibility.md` from the tables.
pub fn render_markdown(flags: &[crate::cli::FlagInfo], metrics: &[MetricInfo]) -> String {
    let mut out = String::new();
    out.push_str(
        "# Compatibility with kube-proxy\n\n\
         Generated from `proxy-daemon/src/compat.rs` and `proxy-daemon/src/cli.rs` by\n\
         `SWITCHYARD_BLESS=1 cargo test -p proxy-daemon --test kube_proxy_compat`; the same test\n\
         checks these tables against the reference kube-proxy v1.37.2 (its `--help`, its\n\
         `--write-config-to` output and its `/metrics`), so a flag, field or metric upstream adds\n\
         is a failing test until it is listed here.\n\n\
         - **same**: accepted, and means what it means in kube-proxy (defaults and validation included).\n\
         - **warned**: accepted and validated as kube-proxy does; it has no effect, and a warning naming it\n  \
           is logged once at start when it is set.\n\
         - **different**: accepted; the difference is said.\n\n",
    );
    let _ = writeln!(out, "## Flags ({})\n\n| flag | configuration key | | note |\n|---|---|---|---|", flags.len());
    for f in flags {
        let _ = writeln!(out, "| `--{}` | `{}` | {} | {} |", f.flag, f.key, f.support.label(), f.support.note());
    }
    let _ = writeln!(
        out,
        "\n## Configuration fields (`KubeProxyConfiguration` v1alpha1, {})\n\n| field | | note |\n|---|---|---|",
        CONFIG_FIELDS.len()
    );
    for f in CONFIG_FIELDS {
        let _ = writeln!(out, "| `{}` | {} | {} |", f.path, f.support.label(), f.support.note());
    }
    let _ = writeln!(out, "\n## Metrics ({})\n\n| metric | | note |\n|---|---|---|", metrics.len());
    for m in metrics {
        let _ = writeln!(out, "| `{}` | {} | {} |", m.name, m.support.label(), m.support.note());
    }
    out
}
