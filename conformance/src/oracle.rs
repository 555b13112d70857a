//! The oracle: what proxy-core's [`ServicePortPlan::flow`] says a probe must
//! observe, so that a scenario file and the core never silently disagree.
//!
//! Every probe's expectation (from the scenario file) is compared with the
//! flow the planner computes for the same packet. A disagreement fails the
//! scenario as "scenario disagrees with the core" before any packet is
//! judged: either the scenario or the core is wrong, and someone must decide.
//!
//! [`ServicePortPlan::flow`]: proxy_core::ServicePortPlan::flow

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use proxy_core::{Frontend, FrontendKind, IpFamily, NodePortAddresses, Route, Snapshot};
use serde::{Deserialize, Serialize};

use crate::addresses::{self, canonical};
use crate::agent::Proto;
use crate::scenario::{Expectation, ExpectedVerdict, ObjectStore, PortRef, SourceExpect, Target, Via};

/// Resolves a probe target to an address and protocol against the current objects.
pub fn resolve(target: &Target, proto: Option<Proto>, objects: &ObjectStore) -> Result<(SocketAddr, Proto), String> {
    let t = match target {
        Target::Literal(addr) => return Ok((*addr, proto.unwrap_or(Proto::Tcp))),
        Target::Service(t) => t,
    };
    let svc =
        objects.service(&t.namespace, &t.service).ok_or_else(|| format!("no Service {}/{}", t.namespace, t.service))?;
    let spec = svc.spec.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let port = match &t.port {
        None if ports.len() == 1 => ports.first(),
        None => return Err(format!("Service {} has {} ports: name one", t.service, ports.len())),
        Some(PortRef::Number(n)) => ports.iter().find(|p| p.port == i32::from(*n)),
        Some(PortRef::Name(name)) => ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())),
    }
    .ok_or_else(|| format!("Service {} has no port {:?}", t.service, t.port))?;
    let port_proto = match port.protocol.as_deref() {
        Some("UDP") => Proto::Udp,
        Some("SCTP") => Proto::Sctp,
        _ => Proto::Tcp,
    };
    let proto = proto.unwrap_or(port_proto);
    let want_v6 = t.family == Some(IpFamily::V6);
    let of_family = |raw: &str| raw.parse::<IpAddr>().ok().filter(|ip| ip.is_ipv6() == want_v6);
    let pick = |list: Vec<String>, what: &str| -> Result<IpAddr, String> {
        list.iter()
            .filter_map(|s| of_family(s))
            .nth(t.index)
            .ok_or_else(|| format!("Service {} has no {what} #{} of the wanted family", t.service, t.index))
    };
    let number = |p: i32| u16::try_from(p).map_err(|_| format!("port {p} out of range"));
    match t.via {
        Via::ClusterIP => {
            let ips =
                spec.cluster_ips.clone().or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip])).unwrap_or_default();
            Ok((SocketAddr::new(pick(ips, "clusterIP")?, number(port.port)?), proto))
        }
        Via::ExternalIP => Ok((
            SocketAddr::new(pick(spec.external_ips.clone().unwrap_or_default(), "externalIP")?, number(port.port)?),
            proto,
        )),
        Via::LoadBalancer => {
            let ingress = svc
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|lb| lb.ingress)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| i.ip)
                .collect();
            Ok((SocketAddr::new(pick(ingress, "load-balancer IP")?, number(port.port)?), proto))
        }
        Via::NodePort => {
            let np = port.node_port.ok_or_else(|| format!("Service {} port has no nodePort", t.service))?;
            let node = t.node.as_deref().unwrap_or(addresses::NODE1);
            let ip = addresses::node_address(node, want_v6)
                .ok_or_else(|| format!("no node address {node:?} of the wanted family"))?;
            Ok((SocketAddr::new(ip, number(np)?), proto))
        }
    }
}

/// What the core predicts for one probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    pub verdict: ExpectedVerdict,
    /// The frontend that handles the probe, if any.
    pub frontend: Option<Frontend>,
    /// Endpoint hosts and whether traffic to each is masqueraded.
    pub endpoints: BTreeMap<String, bool>,
}

/// The host name of an endpoint address (its IP when it is not a lab host).
fn host_name(ip: IpAddr) -> String {
    addresses::host_by_ip(ip).map_or_else(|| ip.to_string(), |h| h.name.to_string())
}

/// Predicts the outcome of a probe from `client` to `dst` with the core's flow table.
pub fn predict(
    snapshot: &Snapshot,
    dst: SocketAddr,
    proto: Proto,
    client: IpAddr,
    nodeport_addresses: &NodePortAddresses,
) -> Prediction {
    let node_addrs = addresses::node1_addresses();
    let primary = addresses::node1_primary_ips();
    let dst_ip = canonical(dst.ip());
    let is_node_addr = node_addrs.contains(&dst_ip) && nodeport_addresses.selects(dst_ip, &primary);
    for plan in snapshot.port_plans() {
        if plan.protocol != proto.core() || IpFamily::of(&dst_ip) != plan.family {
            continue;
        }
        for f in plan.frontends() {
            let hit = f.port == dst.port()
                && match f.kind {
                    FrontendKind::NodePort => is_node_addr,
                    _ => f.ip == Some(dst_ip),
                };
            if !hit {
                continue;
            }
            let class = snapshot.classify_source(client, &node_addrs);
            let flow = plan.flow(f.kind, client, class, snapshot.masquerade());
            let (verdict, endpoints) = match &flow.route {
                Route::Forward(eps) => (
                    ExpectedVerdict::Forward,
                    eps.iter().map(|e| (host_name(e.ip()), flow.masquerades_to(client, e))).collect(),
                ),
                Route::Reject => (ExpectedVerdict::Refused, BTreeMap::new()),
                Route::Drop => (ExpectedVerdict::Dropped, BTreeMap::new()),
            };
            return Prediction { verdict, frontend: Some(f), endpoints };
        }
    }
    Prediction { verdict: ExpectedVerdict::NotServed, frontend: None, endpoints: BTreeMap::new() }
}

/// Compares a scenario's expectation with the core's prediction.
pub fn cross_check(expect: &Expectation, p: &Prediction) -> Result<(), String> {
    let Some(verdict) = expect.verdict() else { return Err("expectation names no verdict".into()) };
    if verdict != p.verdict {
        return Err(format!(
            "scenario expects {verdict:?}, proxy-core's flow() says {:?} (frontend {}, endpoints {:?})",
            p.verdict,
            p.frontend.map_or_else(|| "none".to_string(), |f| f.to_string()),
            p.endpoints.keys().collect::<Vec<_>>()
        ));
    }
    if let Some(allowed) = &expect.endpoints {
        let predicted: BTreeSet<String> = p.endpoints.keys().cloned().collect();
        if &predicted != allowed {
            return Err(format!("scenario expects endpoints {allowed:?}, proxy-core's flow() says {predicted:?}"));
        }
    }
    if let Some(source) = expect.source {
        let want = source == SourceExpect::Masqueraded;
        let wrong: Vec<&String> = p.endpoints.iter().filter(|(_, m)| **m != want).map(|(h, _)| h).collect();
        if !wrong.is_empty() {
            return Err(format!("scenario expects source {source:?}, proxy-core's flow() disagrees for {wrong:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Scenario, Step};
    use proxy_core::{ChangeTracker, PlannerConfig, TrackerConfig};
    use std::path::Path;

    const SCENARIO: &str = r#"
name: oracle
description: oracle test
objects:
  - apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      type: NodePort
      clusterIPs: [10.96.0.10]
      externalTrafficPolicy: Local
      externalIPs: [203.0.113.10]
      ports: [{name: http, port: 80, nodePort: 30080, protocol: TCP}]
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
    addressType: IPv4
    ports: [{name: http, port: 8080, protocol: TCP}]
    endpoints:
      - {addresses: [10.244.1.10], nodeName: node1}
      - {addresses: [10.244.2.10], nodeName: node2}
steps:
  - probe: {from: external, to: {service: web, via: nodePort}}
    expect: {endpoints: [a1], source: preserved}
"#;

    fn snapshot(s: &Scenario) -> std::sync::Arc<Snapshot> {
        let mut planner = PlannerConfig::new(addresses::NODE1);
        planner.masquerade.cluster_cidrs = addresses::cluster_cidrs();
        let mut t = ChangeTracker::new(TrackerConfig::new(planner));
        for ev in s.objects.initial_events() {
            t.apply(ev);
        }
        t.snapshot()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn predictions_follow_the_flow_table() {
        let s = Scenario::parse(SCENARIO, Path::new("o.yaml")).expect("valid");
        let snap = snapshot(&s);
        let Step::Probe { probe, expect } = &s.steps[0].step else { panic!("probe") };
        let (dst, proto) = resolve(&probe.to, None, &s.objects).expect("resolves");
        assert_eq!(dst, "172.18.0.11:30080".parse().expect("addr"));
        let external = predict(&snap, dst, proto, ip("198.51.100.100"), &NodePortAddresses::All);
        assert_eq!(external.verdict, ExpectedVerdict::Forward);
        assert_eq!(external.endpoints, BTreeMap::from([("a1".to_string(), false)]));
        assert_eq!(cross_check(expect, &external), Ok(()));

        // A pod reaches every endpoint with externalTrafficPolicy Local.
        let pod = predict(&snap, dst, proto, ip("10.244.2.100"), &NodePortAddresses::All);
        assert_eq!(pod.endpoints.keys().cloned().collect::<Vec<_>>(), vec!["a1".to_string(), "b1".to_string()]);
        assert!(cross_check(expect, &pod).is_err(), "the scenario's single endpoint disagrees");

        // The node itself is masqueraded.
        let node = predict(&snap, dst, proto, ip("192.0.2.11"), &NodePortAddresses::All);
        assert!(node.endpoints.values().all(|m| *m));
        assert!(cross_check(expect, &node).is_err());

        // Not a frontend: not served.
        let other = predict(
            &snap,
            "172.18.0.11:30081".parse().expect("addr"),
            proto,
            ip("198.51.100.100"),
            &NodePortAddresses::All,
        );
        assert_eq!(other.verdict, ExpectedVerdict::NotServed);
        // node2 is not programmed.
        let n2 = predict(
            &snap,
            "172.18.0.12:30080".parse().expect("addr"),
            proto,
            ip("198.51.100.100"),
            &NodePortAddresses::All,
        );
        assert_eq!(n2.verdict, ExpectedVerdict::NotServed);
        // nodePortAddresses excluding the address.
        let cidr = NodePortAddresses::Cidrs(vec!["192.0.2.0/24".parse().expect("cidr")]);
        assert_eq!(predict(&snap, dst, proto, ip("198.51.100.100"), &cidr).verdict, ExpectedVerdict::NotServed);
    }

    #[test]
    fn cross_check_catches_wrong_verdicts_and_sources() {
        let p = Prediction { verdict: ExpectedVerdict::Refused, frontend: None, endpoints: BTreeMap::new() };
        let dropped = Expectation { dropped: true, ..Default::default() };
        assert!(cross_check(&dropped, &p).is_err());
        let refused = Expectation { refused: true, ..Default::default() };
        assert!(cross_check(&refused, &p).is_ok());
        let fwd = Prediction {
            verdict: ExpectedVerdict::Forward,
            frontend: None,
            endpoints: BTreeMap::from([("a1".into(), true)]),
        };
        let mut e = Expectation { endpoints: Some(BTreeSet::from(["a1".to_string()])), ..Default::default() };
        e.source = Some(SourceExpect::Preserved);
        assert!(cross_check(&e, &fwd).is_err());
        e.source = Some(SourceExpect::Masqueraded);
        assert!(cross_check(&e, &fwd).is_ok());
    }
}
