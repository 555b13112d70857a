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
    pub ip_family: String,
}

/// Label: kube-proxy's `ip_family` (`IPv4`, `IPv6`). kube-proxy runs one
/// proxier per family and labels each one's samples; switchyard syncs both
/// families at once and records the sample under each family it serves.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IpFamilyLabel {
    pub ip_family: String,
}

impl IpFamilyLabel {
    pub fn of(family: crate::model::IpFamily) -> Self {
        IpFamilyLabel { ip_family: family.as_str().to_string() }
    }
}

type HistogramFamily = Family<IpFamilyLabel, Histogram, fn() -> Histogram>;
type TimestampFamily = Family<IpFamilyLabel, Gauge<f64, AtomicU64>>;

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
    /// `kubeproxy_sync_proxy_rules_duration_seconds{ip_family}`
    pub sync_duration: HistogramFamily,
    /// `kubeproxy_sync_full_proxy_rules_duration_seconds{ip_family}`
    pub sync_full_duration: HistogramFamily,
    /// `kubeproxy_sync_partial_proxy_rules_duration_seconds{ip_family}`
    pub sync_partial_duration: HistogramFamily,
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family}`
    pub last_sync_timestamp: TimestampFamily,
    /// `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family}`
    pub last_queued_timestamp: TimestampFamily,
    /// `kubeproxy_network_programming_duration_seconds{ip_family}`
    pub network_programming_duration: HistogramFamily,
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
    // 0.1 ms .. ~ 6.5 min (switchyard's own histogram).
    exponential_buckets(0.0001, 2.0, 22)
}

/// kube-proxy's sync-duration buckets: 1 ms doubling, 15 of them (to ~16 s).
pub fn sync_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 15).collect()
}

/// kube-proxy's network-programming buckets: 0.25 s and 0.5 s, every second
/// to 59 s, every 5 s to 115 s, every 30 s to 5 min.
pub fn network_programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

fn sync_histogram() -> Histogram {
    Histogram::new(sync_buckets())
}

fn network_programming_histogram() -> Histogram {
    Histogram::new(network_programming_buckets())
}

impl ProxyMetrics {
    /// Creates the handles and registers them: kube-proxy's under
    /// `kubeproxy_`, ours under `switchyard_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ProxyMetrics {
            sync_duration: Family::new_with_constructor(sync_histogram),
            sync_full_duration: Family::new_with_constructor(sync_histogram),
            sync_partial_duration: Family::new_with_constructor(sync_histogram),
            last_sync_timestamp: Family::default(),
            last_queued_timestamp: Family::default(),
            network_programming_duration: Family::new_with_constructor(network_programming_histogram),
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// kube-proxy v1.37's definitions (`pkg/proxy/metrics/metrics.go`) of the
    /// metrics switchyard exports under their names: name as scraped, type,
    /// label names, and for histograms the bucket bounds.
    /// (name as scraped, type, label names, bucket bounds).
    type Definition = (&'static str, &'static str, &'static [&'static str], Option<Vec<f64>>);

    fn upstream() -> Vec<Definition> {
        let sync: Vec<f64> = (0..15).map(|i| 0.001 * 2f64.powi(i)).collect();
        let mut netprog = vec![0.25, 0.5];
        netprog.extend((1..=59).map(f64::from));
        netprog.extend((60..=115).step_by(5).map(f64::from));
        netprog.extend((120..=300).step_by(30).map(f64::from));
        vec![
            ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram", &["ip_family"], Some(sync.clone())),
            ("kubeproxy_sync_full_proxy_rules_duration_seconds", "histogram", &["ip_family"], Some(sync.clone())),
            ("kubeproxy_sync_partial_proxy_rules_duration_seconds", "histogram", &["ip_family"], Some(sync)),
            ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge", &["ip_family"], None),
            ("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "gauge", &["ip_family"], None),
            ("kubeproxy_network_programming_duration_seconds", "histogram", &["ip_family"], Some(netprog)),
            ("kubeproxy_sync_proxy_rules_endpoint_changes_pending", "gauge", &[], None),
            ("kubeproxy_sync_proxy_rules_endpoint_changes_total", "counter", &[], None),
            ("kubeproxy_sync_proxy_rules_service_changes_pending", "gauge", &[], None),
            ("kubeproxy_sync_proxy_rules_service_changes_total", "counter", &[], None),
            ("kubeproxy_sync_proxy_rules_no_local_endpoints_total", "gauge", &["ip_family", "traffic_policy"], None),
        ]
    }

    /// Per metric (as scraped): its type, its label names (without `le`),
    /// and its bucket bounds.
    fn exposition(text: &str) -> BTreeMap<String, (String, BTreeSet<String>, Vec<f64>)> {
        let mut out: BTreeMap<String, (String, BTreeSet<String>, Vec<f64>)> = BTreeMap::new();
        let mut types = BTreeMap::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                // OpenMetrics names a counter without `_total`; its samples have it.
                let name = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
                types.insert(name, kind.to_string());
                continue;
            }
            if l.starts_with('#') || l.is_empty() {
                continue;
            }
            let (series, _) = l.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
            let base = ["_bucket", "_count", "_sum", "_created"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| types.get(*b).is_some_and(|t| t == "histogram")))
                .unwrap_or(name);
            let Some(kind) = types.get(base) else { continue };
            let entry = out.entry(base.to_string()).or_insert_with(|| (kind.clone(), BTreeSet::new(), Vec::new()));
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap();
                if k == "le" {
                    let v: f64 = v.trim_matches('"').parse().unwrap_or(f64::INFINITY);
                    if v.is_finite() && name.ends_with("_bucket") && !entry.2.contains(&v) {
                        entry.2.push(v);
                    }
                } else {
                    entry.1.insert(k.to_string());
                }
            }
        }
        out
    }

    #[test]
    fn kube_proxys_metrics_keep_their_names_types_labels_and_buckets() {
        let mut registry = Registry::default();
        let m = ProxyMetrics::register(&mut registry);
        let v4 = IpFamilyLabel::of(crate::model::IpFamily::V4);
        m.sync_duration.get_or_create(&v4).observe(0.01);
        m.sync_full_duration.get_or_create(&v4).observe(0.01);
        m.sync_partial_duration.get_or_create(&v4).observe(0.01);
        m.last_sync_timestamp.get_or_create(&v4).set(1.0);
        m.last_queued_timestamp.get_or_create(&v4).set(1.0);
        m.network_programming_duration.get_or_create(&v4).observe(1.0);
        let labels = NoLocalEndpointsLabels { traffic_policy: "internal".into(), ip_family: "IPv4".into() };
        m.no_local_endpoints.get_or_create(&labels).set(0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let ours = exposition(&text);
        let mut problems = Vec::new();
        for (name, kind, labels, buckets) in upstream() {
            let Some((our_kind, our_labels, our_buckets)) = ours.get(name) else {
                problems.push(format!("{name}: not exported"));
                continue;
            };
            let labels: BTreeSet<String> = labels.iter().map(|l| l.to_string()).collect();
            if our_kind != kind || *our_labels != labels {
                problems.push(format!("{name}: {our_kind} {our_labels:?}, kube-proxy's is {kind} {labels:?}"));
            }
            if let Some(b) = buckets {
                let same = b.len() == our_buckets.len() && b.iter().zip(our_buckets).all(|(a, o)| (a - o).abs() < 1e-9);
                if !same {
                    problems.push(format!("{name}: buckets {our_buckets:?}, kube-proxy's are {b:?}"));
                }
            }
        }
        // Anything else is switchyard's own, and says so.
        let known: BTreeSet<&str> = upstream().iter().map(|u| u.0).collect();
        for name in ours.keys().filter(|n| !known.contains(n.as_str())) {
            if !name.starts_with("switchyard_") {
                problems.push(format!("{name}: neither kube-proxy's nor prefixed switchyard_"));
            }
        }
        assert!(problems.is_empty(), "{}\n{text}", problems.join("\n"));
    }
}
