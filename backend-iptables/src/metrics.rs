//! kube-proxy's iptables metrics, under their kube-proxy names so existing
//! dashboards keep working.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label: the iptables table (`nat`, `filter`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: String,
}

/// The backend's metric handles.
#[derive(Clone, Debug, Default)]
pub struct IptablesMetrics {
    /// `kubeproxy_sync_proxy_rules_iptables_total{table}`: rules we own.
    pub rules: Family<TableLabel, Gauge>,
    /// `kubeproxy_sync_proxy_rules_iptables_restore_failures_total`
    pub restore_failures: Counter,
    /// `kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total`
    pub partial_restore_failures: Counter,
}

impl IptablesMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = IptablesMetrics::default();
        let kp = registry.sub_registry_with_prefix("kubeproxy");
        // kube-proxy's name (a gauge, `_total` and all).
        kp.register(
            "sync_proxy_rules_iptables_total",
            "Total number of iptables rules owned by kube-proxy",
            m.rules.clone(),
        );
        // prometheus-client appends `_total` to counters.
        kp.register(
            "sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            m.restore_failures.clone(),
        );
        kp.register(
            "sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures",
            m.partial_restore_failures.clone(),
        );
        m
    }
}
