//! Conversion from k8s-openapi objects: fields kept, exclusions, bad input.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::net::IpAddr;

use proxy_core::convert::{
    Conversion, ConvertContext, Exclusion, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, ObjectKind, Problem,
    endpoint_slice_from_k8s, node_from_k8s, parse_ip_sloppy, service_from_k8s,
};
use proxy_core::testing::{ServiceBuilder, SliceBuilder, endpoint, node};
use proxy_core::*;

fn ctx() -> ConvertContext {
    ConvertContext { families: FamilySet::V4, service_proxy_name: None }
}

fn accepted<T: std::fmt::Debug>(c: Conversion<T>) -> (T, Vec<proxy_core::convert::ConversionError>) {
    match c {
        Conversion::Accepted { value, warnings } => (value, warnings),
        Conversion::Excluded(e) => panic!("excluded: {e}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn service_keeps_every_field_kube_proxy_honours() {
    let svc = ServiceBuilder::new("ns", "web", "10.96.0.10")
        .node_port("http", 80, "TCP", 30080)
        .port("dns", 53, "UDP")
        .port("sig", 9000, "SCTP")
        .load_balancer_ip("192.0.2.10", None)
        .load_balancer_ip("192.0.2.11", Some("Proxy"))
        .external_ips(&["203.0.113.5"])
        .source_ranges(&["198.51.100.0/24", " 10.1.2.3 "])
        .affinity(Some(60))
        .external_traffic_policy("Local")
        .internal_traffic_policy("Local")
        .health_check_node_port(32000)
        .traffic_distribution("PreferSameNode")
        .build();
    let (info, warnings) = accepted(service_from_k8s(&svc, &ctx()).unwrap());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(info.name, ServiceName::new("ns", "web"));
    assert_eq!(info.service_type, ServiceType::LoadBalancer);
    assert_eq!(info.cluster_ips, vec![ip("10.96.0.10")]);
    assert_eq!(info.ports.len(), 3);
    assert_eq!(info.ports[0].node_port, Some(30080));
    assert_eq!(info.ports[1].protocol, Protocol::Udp);
    assert_eq!(info.ports[2].protocol, Protocol::Sctp);
    assert_eq!(info.external_ips, vec![ip("203.0.113.5")]);
    assert_eq!(info.load_balancer_ingress.len(), 2);
    assert_eq!(info.load_balancer_vips().collect::<Vec<_>>(), vec![ip("192.0.2.10")]);
    assert_eq!(
        info.load_balancer_source_ranges,
        vec!["198.51.100.0/24".parse().unwrap(), "10.1.2.3/32".parse().unwrap()]
    );
    assert_eq!(info.session_affinity, SessionAffinity::ClientIP { timeout_seconds: 60 });
    assert_eq!(info.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(info.internal_traffic_policy, TrafficPolicy::Local);
    assert_eq!(info.health_check_node_port, Some(32000));
    assert_eq!(info.traffic_distribution, Some(TrafficDistribution::PreferSameNode));
    assert!(info.needs_health_check());
}

#[test]
fn defaults_protocol_tcp_and_affinity_timeout() {
    let mut svc = ServiceBuilder::new("ns", "a", "10.96.0.1").port("", 80, "TCP").affinity(None).build();
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = None;
    let (info, _) = accepted(service_from_k8s(&svc, &ctx()).unwrap());
    assert_eq!(info.ports[0].protocol, Protocol::Tcp);
    assert_eq!(info.session_affinity.timeout_seconds(), Some(10800));
}

#[test]
fn exclusions_follow_kube_proxy() {
    let headless = ServiceBuilder::new("ns", "h", "None").port("", 80, "TCP").build();
    assert_eq!(service_from_k8s(&headless, &ctx()).unwrap(), Conversion::Excluded(Exclusion::Headless));

    let ext = ServiceBuilder::new("ns", "e", "").type_("ExternalName").build();
    assert_eq!(service_from_k8s(&ext, &ctx()).unwrap(), Conversion::Excluded(Exclusion::ExternalName));

    let other = ServiceBuilder::new("ns", "o", "10.96.0.2").label(LABEL_SERVICE_PROXY_NAME, "cilium").build();
    assert_eq!(service_from_k8s(&other, &ctx()).unwrap(), Conversion::Excluded(Exclusion::OtherProxy("cilium".into())));
    // A proxy configured with that name takes it.
    let mine = ConvertContext { service_proxy_name: Some("cilium".into()), ..ctx() };
    assert!(matches!(service_from_k8s(&other, &mine).unwrap(), Conversion::Accepted { .. }));

    let slice = SliceBuilder::new("ns", "s", "h").label(LABEL_HEADLESS, "").build();
    assert_eq!(endpoint_slice_from_k8s(&slice, &ctx()).unwrap(), Conversion::Excluded(Exclusion::HeadlessLabel));
    let fqdn = SliceBuilder::new("ns", "f", "svc").address_type("FQDN").build();
    assert!(matches!(endpoint_slice_from_k8s(&fqdn, &ctx()).unwrap(), Conversion::Excluded(Exclusion::AddressType(_))));
    let mut orphan = SliceBuilder::new("ns", "o", "svc").build();
    orphan.metadata.labels = None;
    assert_eq!(endpoint_slice_from_k8s(&orphan, &ctx()).unwrap(), Conversion::Excluded(Exclusion::NoServiceLabel));
}

#[test]
fn bad_ports_are_skipped_with_an_error_naming_the_field() {
    let svc = ServiceBuilder::new("prod", "api", "10.96.0.3")
        .port("ok", 80, "TCP")
        .port("zero", 0, "TCP")
        .port("huge", 70000, "TCP")
        .port("weird", 81, "QUIC")
        .build();
    let (info, warnings) = accepted(service_from_k8s(&svc, &ctx()).unwrap());
    assert_eq!(info.ports.iter().map(|p| &*p.name).collect::<Vec<_>>(), vec!["ok"]);
    let fields: Vec<_> = warnings.iter().map(|w| (w.field.as_str(), w.problem.clone())).collect();
    assert_eq!(
        fields,
        vec![
            ("spec.ports[1].port", Problem::PortOutOfRange(0)),
            ("spec.ports[2].port", Problem::PortOutOfRange(70000)),
            ("spec.ports[3].protocol", Problem::UnknownProtocol("QUIC".into())),
        ]
    );
    assert_eq!(warnings[1].to_string(), "Service prod/api: spec.ports[2].port: port 70000 is out of range 1-65535");
}

#[test]
fn unusable_service_is_an_error_not_a_panic() {
    let bad_ip = ServiceBuilder::new("ns", "x", "10.96.0.999").port("", 80, "TCP").build();
    let err = service_from_k8s(&bad_ip, &ctx()).unwrap_err();
    assert_eq!((err.kind, err.field.as_str()), (ObjectKind::Service, "spec.clusterIPs[0]"));
    assert_eq!(err.problem, Problem::InvalidIp("10.96.0.999".into()));

    let mut no_spec = ServiceBuilder::new("ns", "y", "10.96.0.1").build();
    no_spec.spec = None;
    assert_eq!(service_from_k8s(&no_spec, &ctx()).unwrap_err().field, "spec");

    let mut no_name = ServiceBuilder::new("ns", "z", "10.96.0.1").build();
    no_name.metadata.name = None;
    assert_eq!(service_from_k8s(&no_name, &ctx()).unwrap_err().field, "metadata.name");

    let weird_type = ServiceBuilder::new("ns", "t", "10.96.0.1").type_("Magic").build();
    assert_eq!(service_from_k8s(&weird_type, &ctx()).unwrap_err().field, "spec.type");
}

#[test]
fn families_the_node_does_not_serve_are_skipped() {
    let svc = ServiceBuilder::new("ns", "ds", "10.96.0.4")
        .cluster_ips(&["10.96.0.4", "fd00::4"])
        .port("", 80, "TCP")
        .external_ips(&["fd00::99", "203.0.113.9"])
        .build();
    let (info, warnings) = accepted(service_from_k8s(&svc, &ctx()).unwrap());
    assert_eq!(info.cluster_ips, vec![ip("10.96.0.4")]);
    assert_eq!(info.external_ips, vec![ip("203.0.113.9")]);
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].problem, Problem::FamilyNotServed(IpFamily::V6));

    let dual = ConvertContext { families: FamilySet::DUAL, ..ctx() };
    let (info, warnings) = accepted(service_from_k8s(&svc, &dual).unwrap());
    assert_eq!(info.cluster_ips, vec![ip("10.96.0.4"), ip("fd00::4")]);
    assert!(warnings.is_empty());

    let v6_only = ServiceBuilder::new("ns", "v6", "fd00::5").port("", 80, "TCP").build();
    let err = service_from_k8s(&v6_only, &ctx()).unwrap_err();
    assert_eq!(err.problem, Problem::FamilyNotServed(IpFamily::V6));
}

#[test]
fn ip_mode_proxy_is_kept_but_not_a_vip() {
    let svc = ServiceBuilder::new("ns", "lb", "10.96.0.6")
        .port("", 80, "TCP")
        .load_balancer_ip("192.0.2.1", Some("Proxy"))
        .build();
    let (info, _) = accepted(service_from_k8s(&svc, &ctx()).unwrap());
    assert_eq!(info.load_balancer_ingress[0].ip_mode, IpMode::Proxy);
    assert_eq!(info.load_balancer_vips().count(), 0);
}

#[test]
fn node_ports_only_for_types_that_allocate_them() {
    let svc = ServiceBuilder::new("ns", "c", "10.96.0.7").node_port("", 80, "TCP", 30001).type_("ClusterIP").build();
    let (info, _) = accepted(service_from_k8s(&svc, &ctx()).unwrap());
    assert_eq!(info.ports[0].node_port, None);
}

#[test]
fn slice_conditions_hints_and_bad_endpoints() {
    let slice = SliceBuilder::new("ns", "web-abc", "web")
        .port("http", 8080, "TCP")
        .port("bad", 0, "TCP")
        .endpoint(endpoint("10.0.1.1").node("n1").zone("a").zone_hints(&["b", "a"]).node_hints(&["n1"]))
        .endpoint(endpoint("10.0.1.2").terminating())
        .endpoint(endpoint("10.0.1.3").no_conditions())
        .endpoint(endpoint("not-an-ip"))
        .endpoint(endpoint("fd00::1"))
        .build();
    let (info, warnings) = accepted(endpoint_slice_from_k8s(&slice, &ctx()).unwrap());
    assert_eq!(info.service, ServiceName::new("ns", "web"));
    assert_eq!(info.ports.len(), 1);
    assert_eq!(info.endpoints.len(), 3);
    let e0 = &info.endpoints[0];
    assert_eq!(e0.node_name.as_deref(), Some("n1"));
    assert_eq!(e0.zone.as_deref(), Some("a"));
    assert_eq!(e0.zone_hints().iter().map(|h| &**h).collect::<Vec<_>>(), vec!["a", "b"]);
    let e1 = &info.endpoints[1];
    assert!(!e1.ready && e1.serving && e1.terminating);
    let e2 = &info.endpoints[2];
    assert!(e2.ready && e2.serving && !e2.terminating, "absent conditions mean ready and serving");
    let fields: Vec<_> = warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, vec!["ports[1].port", "endpoints[3].addresses[0]", "endpoints[4].addresses[0]"]);
}

#[test]
fn node_addresses_labels_and_deletion() {
    let mut n = node("node-1", "192.168.1.10", Some("zone-a"));
    n.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2024-01-01T00:00:00Z".parse().unwrap()));
    let (info, _) = accepted(node_from_k8s(&n, &ctx()).unwrap());
    assert_eq!(&*info.name, "node-1");
    assert_eq!(info.zone(), Some("zone-a"));
    assert_eq!(info.primary_ip(IpFamily::V4), Some(ip("192.168.1.10")));
    assert!(info.deleting);
}

#[test]
fn the_cluster_autoscalers_taint_makes_the_node_leave() {
    let mut n = node("node-1", "192.168.1.10", None);
    let (info, _) = accepted(node_from_k8s(&n, &ctx()).unwrap());
    assert!(!info.deleting);
    n.spec.get_or_insert_default().taints = Some(vec![k8s_openapi::api::core::v1::Taint {
        key: "ToBeDeletedByClusterAutoscaler".into(),
        value: Some("1733230000".into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    }]);
    let (info, _) = accepted(node_from_k8s(&n, &ctx()).unwrap());
    assert!(info.deleting, "kube-proxy's /healthz reports such a node ineligible");
}

#[test]
fn sloppy_ipv4_parsing_matches_kubernetes() {
    assert_eq!(parse_ip_sloppy("010.001.000.009"), Some(ip("10.1.0.9")));
    assert_eq!(parse_ip_sloppy("fd00::1"), Some(ip("fd00::1")));
    for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1..2.3", "0001.2.3.4", "a.b.c.d"] {
        assert_eq!(parse_ip_sloppy(bad), None, "{bad}");
    }
}
