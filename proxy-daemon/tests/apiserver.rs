//! The daemon against a real control plane: upstream etcd and kube-apiserver
//! (`conformance::apiserver`, binaries from `./x reference`), with
//! client-certificate authentication, RBAC on, and `deploy/base/rbac.yaml` applied
//! as shipped. The daemon runs with a kubeconfig for the ServiceAccount that
//! file grants, so these tests prove the shipped RBAC sufficient, and that a
//! verb missing from it is reported by resource and verb.
//!
//! Ignored by default (they need the reference binaries, and starting a
//! control plane takes seconds): `./x test` runs them in its `apiserver`
//! tier, or `./x reference && cargo test -p proxy-daemon --test apiserver -- --ignored`.
#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use conformance::apiserver::{ControlPlane, ControlPlaneConfig, ReferenceBinaries};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams};

const RBAC: &str = include_str!("../../deploy/base/rbac.yaml");

/// The objects every test starts with: this node, one Service with one endpoint.
const NODE1: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.0.1.1]
  conditions: {ready: true}
  nodeName: node1
"#;

const LATE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: late, namespace: prod}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80, protocol: TCP}]
"#;

/// A control plane with `deploy/base/rbac.yaml` (edited by `edit_role`, to take
/// a verb away) and the starting objects applied; returns it with a
/// kubeconfig for the ServiceAccount the RBAC binds.
async fn control_plane(edit_role: impl FnOnce(&mut serde_json::Value)) -> (ControlPlane, PathBuf) {
    let bins = ReferenceBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let cp = ControlPlane::start(&bins, &ControlPlaneConfig::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let docs = rbac_with(edit_role);
    for doc in &docs {
        cp.apply(doc).await.unwrap_or_else(|e| panic!("applying deploy/base/rbac.yaml: {e}\n{}", cp.log_tails()));
    }
    cp.apply_yaml(NODE1).await.unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = cp.service_account_kubeconfig("kube-system", "switchyard").await.unwrap_or_else(|e| panic!("{e}"));
    (cp, kubeconfig)
}

/// deploy/base/rbac.yaml's documents, its ClusterRole edited by `edit_role`.
fn rbac_with(edit_role: impl FnOnce(&mut serde_json::Value)) -> Vec<serde_json::Value> {
    let mut docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(RBAC).unwrap();
    edit_role(docs.iter_mut().find(|d| d["kind"] == "ClusterRole").expect("deploy/base/rbac.yaml has a ClusterRole"));
    docs
}

/// Removes `verb` from the ClusterRole's rule for `resource`.
fn without(resource: &'static str, verb: &'static str) -> impl FnOnce(&mut serde_json::Value) {
    move |role| {
        let rules = role["rules"].as_array_mut().unwrap();
        let rule = rules.iter_mut().find(|r| r["resources"].as_array().unwrap().iter().any(|x| x == resource)).unwrap();
        rule["verbs"].as_array_mut().unwrap().retain(|v| v != verb);
    }
}

fn start_daemon(dir: &Path, kubeconfig: &Path, extra: &[&str]) -> Daemon {
    let kc = format!("--kubeconfig={}", kubeconfig.display());
    let mut args = vec![kc.as_str(), "--hostname-override=node1", "--min-sync-period=50ms"];
    args.extend(extra);
    Daemon::start(&memory_bin(), dir, &args)
}

fn memory(dir: &Path, kubeconfig: &Path) -> Daemon {
    start_daemon(dir, kubeconfig, &["--proxy-mode=memory", "-v=4"])
}

/// A gauge's value in /metrics.
async fn gauge(d: &Daemon, name: &str) -> Option<i64> {
    let (_, body) = d.get("/metrics").await;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until a gauge reads `want`; on failure shows the metrics and the log.
async fn wait_gauge(d: &Daemon, name: &str, want: i64, what: &str) {
    let deadline = Instant::now() + patience();
    loop {
        if gauge(d, name).await == Some(want) {
            return;
        }
        if Instant::now() > deadline {
            let (_, metrics) = d.get("/metrics").await;
            panic!("not within {:?}: {what} ({name} {want})\n{metrics}\nlog:\n{}", patience(), d.log_text());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The Services the API server holds that a proxy serves (all of them here:
/// `default/kubernetes` and the tests' own).
async fn api_services(cp: &ControlPlane) -> i64 {
    let api: Api<Service> = Api::all(cp.admin_client());
    api.list(&Default::default()).await.unwrap().items.len() as i64
}

#[tokio::test]
#[ignore = "needs etcd and kube-apiserver from `./x reference`; run by `./x test` (tier apiserver)"]
async fn daemon_lists_and_watches_a_real_apiserver_with_the_shipped_rbac() {
    let (cp, kubeconfig) = control_plane(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let d = memory(dir.path(), &kubeconfig);
    d.wait_ready().await;

    // The initial lists: the API server's own `kubernetes` Service and web.
    let listed = api_services(&cp).await;
    assert_eq!(listed, 2, "default/kubernetes and default/web");
    wait_gauge(&d, "switchyard_services", listed, "every listed Service in the desired state").await;

    // The watch: a Service created, then deleted, through the API.
    cp.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n").await.unwrap();
    cp.apply_yaml(LATE).await.unwrap();
    wait_gauge(&d, "switchyard_services", listed + 1, "the created Service arrives through the watch").await;
    let api: Api<Service> = Api::namespaced(cp.admin_client(), "prod");
    api.delete("late", &DeleteParams::default()).await.unwrap();
    wait_gauge(&d, "switchyard_services", listed, "the deleted Service leaves").await;

    // Nothing was refused on the way: no source problem, no failing watch.
    let (code, body) = d.get("/healthz").await;
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["sourceProblems"], serde_json::json!({}), "{body}");
    let log = d.log_text();
    assert!(!log.contains("forbidden") && !log.contains("watch failed"), "{log}");
}

#[tokio::test]
#[ignore = "needs etcd and kube-apiserver from `./x reference`; run by `./x test` (tier apiserver)"]
async fn a_verb_missing_from_the_role_is_reported_by_resource_and_verb() {
    // Without `list` on EndpointSlices the initial list is refused: never ready,
    // and /readyz says which resource and verb.
    let (cp, kubeconfig) = control_plane(without("endpointslices", "list")).await;
    let dir = tempfile::tempdir().unwrap();
    let d = memory(dir.path(), &kubeconfig);
    let forbidden = r#"cannot list resource "endpointslices""#;
    eventually("/readyz names the forbidden list", || async {
        let (code, body) = d.get("/readyz").await;
        code == 503 && body.contains("api server EndpointSlice") && body.contains(forbidden)
    })
    .await;
    // Said once, in words: no struct dump, no repetition.
    let (_, body) = d.get("/readyz").await;
    assert_eq!(
        body.trim(),
        r#"not ready: no successful sync yet; api server EndpointSlice: initial list failed: endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:kube-system:switchyard" cannot list resource "endpointslices" in API group "discovery.k8s.io" at the cluster scope (403 Forbidden); grant this identity that verb on that resource (as deploy/base/rbac.yaml does)"#
    );
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains(forbidden)).unwrap_or_else(|| panic!("the log names it too:\n{log}"));
    assert!(line.contains("resource=EndpointSlice") && line.matches(forbidden).count() == 1, "{line}");

    // The shipped role restores it: the retry (backoff up to 30 s) lists, syncs, is ready.
    cp.apply_yaml(RBAC).await.unwrap();
    let deadline = Instant::now() + patience() + Duration::from_secs(30);
    loop {
        if d.get("/readyz").await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not ready after the role was restored:\n{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(d);

    // Without `watch` on Services the lists succeed (ready), and every
    // health answer names the refused watch until it is granted.
    for doc in rbac_with(without("services", "watch")) {
        cp.apply(&doc).await.unwrap();
    }
    let d = memory(dir.path(), &kubeconfig);
    d.wait_ready().await;
    eventually("/healthz names the forbidden watch", || async {
        let (_, body) = d.get("/healthz").await;
        let health: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        health["sourceProblems"]["api server Service"].as_str().is_some_and(|p| {
            p.starts_with("watch could not start: ")
                && p.contains(r#"cannot watch resource "services""#)
                && p.contains("(403 Forbidden)")
        })
    })
    .await;
}

/// The iptables backend in a namespace of its own, fed by the real API
/// server: a Service created through the API is in the kernel, and
/// `switchyard inspect` (reading the same API server) finds the kernel as desired.
#[tokio::test]
#[ignore = "needs etcd and kube-apiserver from `./x reference`; run by `./x test` (tier apiserver)"]
async fn iptables_in_a_namespace_programs_what_the_apiserver_holds() {
    if !can_use_netns("iptables_in_a_namespace_programs_what_the_apiserver_holds") {
        panic!("this test needs root and `ip netns`; ./x test runs it as root");
    }
    let (cp, kubeconfig) = control_plane(|_| {}).await;
    // The node's address, as a kubelet would report it.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cp.admin_client());
    let status = serde_json::json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}]}});
    nodes.patch_status("node1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&status)).await.unwrap();

    let ns = NetnsHandle::create();
    let dir = tempfile::tempdir().unwrap();
    // The process stays in the root namespace (it reaches the API server on
    // loopback); the backend programs `ns`.
    let common = [
        format!("--kubeconfig={}", kubeconfig.display()),
        "--hostname-override=node1".into(),
        format!("--netns={}", ns.name),
    ];
    let mut args: Vec<&str> = common.iter().map(String::as_str).collect();
    args.extend(["--proxy-mode=iptables", "--cluster-cidr=10.244.0.0/16", "--min-sync-period=50ms"]);
    let d = Daemon::start(&switchyard_bin(), dir.path(), &args);
    d.wait_ready().await;
    // client-go's request metrics, for the kube-rs client (the lists, the watches).
    let (_, metrics) = d.get("/metrics").await;
    for want in ["rest_client_requests_total{code=\"200\"", "rest_client_request_duration_seconds_bucket{"] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }

    cp.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n").await.unwrap();
    cp.apply_yaml(&format!(
        "{LATE}---\n{}",
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: late-1
  namespace: prod
  labels: {kubernetes.io/service-name: late}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.0.2.1]
  conditions: {ready: true}
  nodeName: node1
"#
    ))
    .await
    .unwrap();

    let bin = switchyard_bin();
    let mut inspect: Vec<&str> = vec!["inspect", "--proxy-mode=iptables"];
    inspect.extend(common.iter().map(String::as_str));
    let mut last = String::new();
    eventually("inspect: the created Service is in the kernel, as the API server says", || {
        let (code, out, err) = run(&bin, &inspect, &[]);
        let ok = code == Some(0) && out.contains("10.96.0.11:80/tcp") && out.contains("10.0.2.1:8080");
        last = format!("exit {code:?}\n{out}\n{err}");
        async move { ok }
    })
    .await;
    let (_, rules) = ns.exec(&["iptables-save"]);
    assert!(rules.contains("10.96.0.11/32") && rules.contains("10.0.2.1:8080"), "{rules}\n{last}");
}
