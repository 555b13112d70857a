//! A catalog of ClusterIP Services at scale, for benchmarks: backends'
//! benches (`cargo bench -p backend-iptables`, `-p backend-nftables`) and
//! plugin authors' measure their sync on the same plans.
//!
//! Deterministic: the same `n`, `eps` and `generation` give the same plans.
//! The probe Service (the highest ClusterIP) has one endpoint, 10.180.0.10:8080
//! (the backend labs' pod); the others have random pod addresses, one in 50
//! of them on this node (`node-1`). `generation` changes one endpoint of
//! `svc-1`, so consecutive generations are a one-endpoint change.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::{
    Endpoint, EndpointInfo, IpFamily, MasqueradeConfig, PlannerConfig, Protocol, Route, ServiceInfo, ServiceName,
    ServicePlan, ServicePortInfo, ServicePortName, ServicePortPlan, ServiceType, SessionAffinity, Snapshot,
    SyncRequest, TrafficPolicy,
};

/// xorshift: deterministic addresses without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Pods in 10.0.0.0/8: traffic from elsewhere is masqueraded.
pub fn masquerade() -> MasqueradeConfig {
    let pods = ipnet::Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).map(ipnet::IpNet::V4).into_iter().collect();
    MasqueradeConfig { all: false, cluster_cidrs: pods }
}

/// The ClusterIPs of `n` Services: random, distinct, in 10.96.0.0/12.
pub fn cluster_ips(n: usize) -> Vec<IpAddr> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut used = BTreeSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let ip = Ipv4Addr::from(0x0a60_0000 | (rng.next() as u32 & 0x000f_ffff));
        if used.insert(ip) {
            out.push(IpAddr::from(ip));
        }
    }
    out
}

/// The Service latency is measured against: the highest ClusterIP (in
/// backend-iptables' tree of ClusterIP chains, the longest walk).
pub fn probe_index(n: usize) -> usize {
    let ips = cluster_ips(n);
    (0..n).max_by_key(|i| ips[*i]).unwrap_or(0)
}

/// `n` ClusterIP Services with `eps` endpoints each (random pod addresses);
/// the probe Service has one endpoint, the lab's pod1 (10.180.0.10:8080).
pub fn plans(n: usize, eps: usize, generation: u64) -> Vec<ServicePlan> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let ips = cluster_ips(n);
    let probe = probe_index(n);
    (0..n)
        .map(|i| {
            let cip = ips[i];
            let name = ServiceName::new("bench", &format!("svc-{i}"));
            let info = Arc::new(ServiceInfo {
                name: name.clone(),
                service_type: ServiceType::ClusterIP,
                cluster_ips: vec![cip],
                ports: vec![ServicePortInfo {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: None,
                }],
                external_ips: vec![],
                load_balancer_ingress: vec![],
                load_balancer_source_ranges: vec![],
                session_affinity: SessionAffinity::None,
                external_traffic_policy: TrafficPolicy::Cluster,
                internal_traffic_policy: TrafficPolicy::Cluster,
                health_check_node_port: None,
                traffic_distribution: None,
                created: None,
            });
            let endpoints: Vec<Endpoint> = (0..eps)
                .map(|e| {
                    let address: IpAddr = if i == probe {
                        Ipv4Addr::new(10, 180, 0, 10).into()
                    } else {
                        let mut ip = Ipv4Addr::from(0x0a80_0000 | (rng.next() as u32 & 0x003f_ffff));
                        if e == 0 && i == 1 {
                            ip = Ipv4Addr::from(0x0a80_0000 | (generation as u32 & 0xffff));
                        }
                        ip.into()
                    };
                    Endpoint {
                        info: Arc::new(EndpointInfo {
                            address,
                            ready: true,
                            serving: true,
                            terminating: false,
                            node_name: Some(if e % 50 == 0 { "node-1" } else { "node-2" }.into()),
                            zone: None,
                            hints: None,
                        }),
                        port: 8080,
                        is_local: e % 50 == 0,
                    }
                })
                .collect::<Vec<_>>();
            let endpoints = if i == probe { endpoints.into_iter().take(1).collect() } else { endpoints };
            let route = Route::Forward(endpoints.into());
            ServicePlan {
                service: info,
                ports: vec![ServicePortPlan {
                    name: ServicePortName { service: name, port: "http".into(), protocol: Protocol::Tcp },
                    family: IpFamily::V4,
                    protocol: Protocol::Tcp,
                    port: 80,
                    cluster_ip: Some(cip),
                    node_port: None,
                    external_ips: vec![],
                    load_balancer_ips: vec![],
                    source_ranges: vec![],
                    affinity_timeout_seconds: None,
                    health_check_node_port: None,
                    cluster: route,
                    local: None,
                    internal_policy_local: false,
                    external_policy_local: false,
                    local_ready_endpoints: 0,
                    has_endpoints: true,
                    contested: vec![],
                }],
            }
        })
        .collect()
}

/// The catalog planned for `node-1`.
pub fn snapshot(n: usize, eps: usize, generation: u64) -> Arc<Snapshot> {
    let mut cfg = PlannerConfig::new("node-1");
    cfg.masquerade = masquerade();
    Arc::new(Snapshot::from_plans(cfg, None, plans(n, eps, generation)))
}

/// A request naming `changed` (Services of namespace `bench`).
pub fn request(snapshot: Arc<Snapshot>, changed: &[&str], full: bool) -> SyncRequest {
    let changed = changed.iter().map(|n| ServiceName::new("bench", n)).collect();
    SyncRequest { snapshot, changed: Arc::new(changed), full }
}
