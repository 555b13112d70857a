//! Metric handles, registered in an explicit registry (no globals).
//!
//! Metrics kube-proxy defines keep kube-proxy's names, so existing dashboards
//! and alerts keep working; ours are prefixed `switchyard_`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::convert::ObjectKind;

/// Label: the kind of object that was invalid.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: KindValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum KindValue {
    Service,
    EndpointSlice,
    Node,
}

impl From<ObjectKind> for KindValue {
    fn from(k: ObjectKind) -> Self {
        match k {
            ObjectKind::Service => KindValue::Service,
            ObjectKind::EndpointSlice => KindValue::EndpointSlice,
            ObjectKind::Node => KindValue::Node,
        }
    }
}

/// Labels of kube-proxy's `..._no_local_endpoints_total` gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NoLocalEndpointsLabels {
    /// `internal` or `external`.
    pub traffic_policy: String,
    /// `IPv4` or `IPv6`.
    pub address_family: String,
}

/// Label: the backend (proxy mode).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

/// Labels of `switchyard_drift_repairs_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub backend: String,
    /// What was repaired (`chain`, `hook jump`, `tc link`, ...).
    pub kind: String,
}

/// The sync-loop metrics.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// `kubeproxy_sync_proxy_rules_duration_seconds`
    pub sync_duration: Histogram,
    /// `kubeproxy_sync_full_proxy_rules_duration_seconds`
    pub sync_full_duration: Histogram,
    /// `kubeproxy_sync_partial_proxy_rules_duration_seconds`
    pub sync_partial_duration: Histogram,
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds`
    pub last_sync_timestamp: Gauge<f64, AtomicU64>,
    /// `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds`
    pub last_queued_timestamp: Gauge<f64, AtomicU64>,
    /// `kubeproxy_network_programming_duration_seconds`
    pub network_programming_duration: Histogram,
    /// `kubeproxy_sync_proxy_rules_endpoint_changes_pending`
    pub endpoint_changes_pending: Gauge,
    /// `kubeproxy_sync_proxy_rules_endpoint_changes_total`
    pub endpoint_changes_total: Counter,
    /// `kubeproxy_sync_proxy_rules_service_changes_pending`
    pub service_changes_pending: Gauge,
    /// `kubeproxy_sync_proxy_rules_service_changes_total`
    pub service_changes_total: Counter,
    /// `kubeproxy_sync_proxy_rules_no_local_endpoints_total`
    pub no_local_endpoints: Family<NoLocalEndpointsLabels, Gauge>,
    /// `switchyard_sync_failures_total{backend}`
    pub sync_failures: Family<BackendLabel, Counter>,
    /// `switchyard_invalid_objects_total{kind}`: objects or fields skipped as invalid.
    pub invalid_objects: Family<KindLabel, Counter>,
    /// `switchyard_queue_to_programmed_seconds`: from an event's arrival to its sync.
    pub queue_to_programmed: Histogram,
    /// `switchyard_services`: Services in the desired state.
    pub services: Gauge,
    /// `switchyard_drift_repairs_total{backend,kind}`: kernel objects of
    /// ours found deleted or changed by someone else, and repaired.
    pub drift_repairs: Family<DriftLabels, Counter>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 0.1 ms .. ~ 6.5 min, as kube-proxy's ExponentialBuckets(0.0001, 2, 22)
    exponential_buckets(0.0001, 2.0, 22)
}

impl ProxyMetrics {
    /// Creates the handles and registers them: kube-proxy's under
    /// `kubeproxy_`, ours under `switchyard_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ProxyMetrics {
            sync_duration: Histogram::new(latency_buckets()),
            sync_full_duration: Histogram::new(latency_buckets()),
            sync_partial_duration: Histogram::new(latency_buckets()),
            last_sync_timestamp: Gauge::default(),
            last_queued_timestamp: Gauge::default(),
            network_programming_duration: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            endpoint_changes_pending: Gauge::default(),
            endpoint_changes_total: Counter::default(),
            service_changes_pending: Gauge::default(),
            service_changes_total: Counter::default(),
            no_local_endpoints: Family::default(),
            sync_failures: Family::default(),
            invalid_objects: Family::default(),
            queue_to_programmed: Histogram::new(latency_buckets()),
            services: Gauge::default(),
            drift_repairs: Family::default(),
        };
        let kp = registry.sub_registry_with_prefix("kubeproxy");
        kp.register("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", m.sync_duration.clone());
        kp.register(
            "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full_duration.clone(),
        );
        kp.register(
            "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial_duration.clone(),
        );
        kp.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync_timestamp.clone(),
        );
        kp.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued_timestamp.clone(),
        );
        kp.register(
            "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming_duration.clone(),
        );
        kp.register(
            "sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            m.endpoint_changes_pending.clone(),
        );
        // prometheus-client appends `_total` to counters.
        kp.register(
            "sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes_total.clone(),
        );
        kp.register(
            "sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            m.service_changes_pending.clone(),
        );
        kp.register(
            "sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes_total.clone(),
        );
        kp.register(
            "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        let ours = registry.sub_registry_with_prefix("switchyard");
        ours.register("sync_failures", "Syncs that failed and will be retried", m.sync_failures.clone());
        ours.register(
            "drift_repairs",
            "Kernel objects of ours found deleted or changed by someone else, and repaired",
            m.drift_repairs.clone(),
        );
        ours.register(
            "invalid_objects",
            "Objects or fields skipped because they were invalid",
            m.invalid_objects.clone(),
        );
        ours.register(
            "queue_to_programmed_seconds",
            "From a change's arrival in the proxy to its successful sync",
            m.queue_to_programmed.clone(),
        );
        ours.register("services", "Services in the desired state", m.services.clone());
        m
    }
}
