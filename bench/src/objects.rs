//! The Services a measurement loads: N ClusterIP Services in namespace
//! `bench`, port 80 → 8080, created in index order.
//!
//! - Service 0 (the *first* created) is also a NodePort (30080) and its
//!   endpoints are real: the pod's addresses `.10`, `.11`, ….
//! - Service N-1 (the *last* created) has one real endpoint, `.20` or
//!   `.21`; one-endpoint changes swap it, so the first connection that
//!   reaches the new address dates the change in the data plane.
//! - Every other Service has `endpoints` made-up pod addresses in
//!   10.128.0.0/10 that nothing connects to; churn rewrites one of them.
//!   Their EndpointSlices put them on another node ([`REMOTE_NODE`]), as
//!   in a cluster big enough to have 10,000 Services: only the real pod's
//!   endpoints are local to the measured node. (Locality matters to
//!   backends that treat local endpoints apart, e.g. iptables marks
//!   hairpin traffic per local endpoint.)
//!
//! ClusterIPs are sequential from 10.96.0.10.

use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_core::testing::{ServiceBuilder, SliceBuilder, endpoint, node};
use serde_json::Value;

use crate::lab::{self, NODE_IP, POD_PORT};

pub const NAMESPACE: &str = "bench";
pub const NODE_NAME: &str = "node-a";
/// Where the made-up endpoints live.
pub const REMOTE_NODE: &str = "node-b";
pub const SERVICE_PORT: u16 = 80;
pub const NODE_PORT: u16 = 30080;

/// One Service as both the daemon and the kube-proxy generators see it.
#[derive(Clone, Debug)]
pub struct Svc {
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub node_port: Option<u16>,
    pub endpoints: Vec<Ipv4Addr>,
}

pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32)
}

pub fn name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// A made-up endpoint address: distinct per (Service, slot, version).
fn fake_endpoint(i: usize, slot: usize, version: usize) -> Ipv4Addr {
    let k = (i * 16 + slot) as u32 ^ (version as u32).wrapping_mul(0x9e37_79b9);
    Ipv4Addr::from(0x0a80_0000 | (k & 0x003f_ffff))
}

/// The last Service's endpoint for a version of the change (alternates).
pub fn moving_endpoint(version: usize) -> Ipv4Addr {
    lab::pod_endpoint(10 + (version % 2) as u8)
}

/// Service `i` of `n`, at `version` of its endpoints.
pub fn svc(i: usize, n: usize, endpoints: usize, version: usize) -> Svc {
    let eps = if i == 0 {
        (0..endpoints.min(10)).map(|e| lab::pod_endpoint(e as u8)).collect()
    } else if i + 1 == n {
        vec![moving_endpoint(version)]
    } else {
        (0..endpoints).map(|e| fake_endpoint(i, e, if e == 0 { version } else { 0 })).collect()
    };
    Svc { name: name(i), cluster_ip: cluster_ip(i), node_port: (i == 0).then_some(NODE_PORT), endpoints: eps }
}

pub fn all(n: usize, endpoints: usize) -> Vec<Svc> {
    (0..n).map(|i| svc(i, n, endpoints, 0)).collect()
}

fn with_kind<T: serde::Serialize>(obj: &T, api_version: &str, kind: &str) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    v["apiVersion"] = api_version.into();
    v["kind"] = kind.into();
    v
}

pub fn service_json(s: &Svc) -> Value {
    let ip = s.cluster_ip.to_string();
    let b = ServiceBuilder::new(NAMESPACE, &s.name, &ip);
    let b = match s.node_port {
        Some(np) => b.type_("NodePort").node_port("http", i32::from(SERVICE_PORT), "TCP", i32::from(np)),
        None => b.port("http", i32::from(SERVICE_PORT), "TCP"),
    };
    with_kind(&b.build(), "v1", "Service")
}

pub fn slice(s: &Svc) -> EndpointSlice {
    let mut b =
        SliceBuilder::new(NAMESPACE, &format!("{}-1", s.name), &s.name).port("http", i32::from(POD_PORT), "TCP");
    for ep in &s.endpoints {
        let node = if lab::is_pod_address(*ep) { NODE_NAME } else { REMOTE_NODE };
        b = b.endpoint(endpoint(&ep.to_string()).node(node));
    }
    b.build()
}

pub fn slice_json(s: &Svc) -> Value {
    with_kind(&slice(s), "discovery.k8s.io/v1", "EndpointSlice")
}

pub fn node_json() -> Value {
    with_kind(&node(NODE_NAME, &NODE_IP.to_string(), None), "v1", "Node")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(s: &Svc) -> Vec<String> {
        slice(s).endpoints.iter().map(|e| e.node_name.clone().unwrap_or_default()).collect()
    }

    #[test]
    fn only_the_real_pod_is_local() {
        let n = 5;
        assert_eq!(nodes(&svc(0, n, 3, 0)), vec![NODE_NAME; 3], "Service 0 reaches the real pod");
        assert_eq!(nodes(&svc(n - 1, n, 3, 1)), vec![NODE_NAME], "the moving endpoint is the real pod");
        assert_eq!(nodes(&svc(2, n, 3, 0)), vec![REMOTE_NODE; 3], "made-up endpoints are elsewhere");
    }
}
