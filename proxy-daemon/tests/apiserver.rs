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

const LATE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: late, namespace: prod}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80, protocol: TCP}]
"#;

/// A control plane with `deploy/base/rbac.yaml` (edited by `edit_role`, to take
/// a verb away) and [`NODE1_WEB`] applied; returns it with a kubeconfig for the
/// ServiceAccount the RBAC binds.
async fn control_plane(edit_role: impl FnOnce(&mut serde_json::Value)) -> (ControlPlane, PathBuf) {
    control_plane_with(edit_role, NODE1_WEB).await
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
    assert!(testkit::is_root(), "this test needs root and `ip netns`; ./x test runs it as root");
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

// ---- Robustness against a real API server: restarts, expired watches,
// ---- large paginated lists, long outages.

/// etcd keys of objects as kube-apiserver stores them (`--etcd-prefix=/registry`).
fn service_key(ns: &str, name: &str) -> String {
    format!("/registry/services/specs/{ns}/{name}")
}

/// The daemon's /healthz: its code and JSON body.
async fn health(d: &Daemon) -> (u16, serde_json::Value) {
    let (code, body) = d.get("/healthz").await;
    (code, serde_json::from_str(&body).unwrap_or_default())
}

/// The iptables daemon of these tests in `ns`, reading `kubeconfig`.
fn iptables_daemon(dir: &Path, kubeconfig: &Path, ns: &NetnsHandle) -> Daemon {
    let args = [
        format!("--kubeconfig={}", kubeconfig.display()),
        "--hostname-override=node1".into(),
        format!("--netns={}", ns.name),
        "--proxy-mode=iptables".into(),
        "--cluster-cidr=10.244.0.0/16".into(),
        "--min-sync-period=50ms".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(&switchyard_bin(), dir, &args)
}

/// Whether `ns`'s rules name `ip` (a Service with endpoints in nat, one
/// without in filter, where it is rejected).
fn programmed(ns: &NetnsHandle, ip: &str) -> bool {
    let (_, rules) = ns.exec(&["iptables-save"]);
    rules.contains(&format!("{ip}/32"))
}

/// Waits until a gauge reads `want`, for as long as it keeps moving: fails
/// after the patience passes without any change (a loaded machine lists
/// 10,000 objects slowly, but steadily).
async fn wait_gauge_progress(d: &Daemon, name: &str, want: i64, what: &str) {
    let mut last = None;
    let mut deadline = Instant::now() + patience();
    loop {
        let now = gauge(d, name).await;
        if now == Some(want) {
            return;
        }
        if now != last {
            last = now;
            deadline = Instant::now() + patience();
        }
        if Instant::now() > deadline {
            panic!(
                "no progress for {:?}: {what} ({name} at {last:?}, want {want})\nlog:\n{}",
                patience(),
                d.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests the API server counted for a verb and resource (its `/metrics`).
async fn apiserver_requests(cp: &ControlPlane, verb: &str, resource: &str) -> f64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = cp.admin_client().request_text(req).await.unwrap();
    let (v, r) = (format!("verb=\"{verb}\""), format!("resource=\"{resource}\""));
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains(&v) && l.contains(&r))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The API server is killed and started again while the daemon runs: the
/// rules stay in the kernel and /healthz stays 200 during the gap (the watch
/// failure is reported in `sourceProblems`), the daemon reconnects by itself,
/// relists, and converges on what changed while it could not watch (a
/// Service deleted straight from etcd behind the stopped API server); the
/// watches work again afterwards.
#[tokio::test]
#[ignore = "needs etcd and kube-apiserver from `./x reference`; run by `./x test` (tier apiserver)"]
async fn an_apiserver_restart_keeps_the_rules_and_converges_by_relisting() {
    assert!(testkit::is_root(), "this test needs root and `ip netns`; ./x test runs it as root");
    let (mut cp, kubeconfig) = control_plane(|_| {}).await;
    let ns = NetnsHandle::create();
    let dir = tempfile::tempdir().unwrap();
    let d = iptables_daemon(dir.path(), &kubeconfig, &ns);
    d.wait_ready().await;
    eventually("web is programmed", || async { programmed(&ns, "10.96.0.10") }).await;

    cp.stop_apiserver();
    eventually("the daemon notices the API server is gone", || async {
        let (_, h) = health(&d).await;
        h["sourceProblems"].as_object().is_some_and(|p| !p.is_empty())
    })
    .await;
    let (code, h) = health(&d).await;
    assert_eq!(code, 200, "an unreachable API server is not a broken proxy (kube-proxy's /healthz neither): {h}");
    assert!(programmed(&ns, "10.96.0.10"), "the rules stay while the API server is away");

    // A change the daemon can only learn by relisting: web deleted behind the API server's back.
    assert_eq!(cp.etcd_delete(&service_key("default", "web")).await.unwrap(), 1);
    cp.start_apiserver().await.unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tails()));

    eventually("web's rules go once the daemon has relisted", || async { !programmed(&ns, "10.96.0.10") }).await;
    eventually("the source problems clear", || async {
        let (code, h) = health(&d).await;
        code == 200 && h["sourceProblems"] == serde_json::json!({})
    })
    .await;
    // The watches run again: a Service created now arrives without a restart.
    cp.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n").await.unwrap();
    cp.apply_yaml(LATE).await.unwrap();
    eventually("a Service created after the restart is programmed", || async { programmed(&ns, "10.96.0.11") }).await;
    let log = d.log_text();
    assert!(log.contains("watch recovered"), "{log}");
}

/// A watch that resumes from a compacted revision gets `410 Gone`: the
/// daemon relists (deleting what vanished meanwhile) instead of retrying
/// the same resourceVersion forever. The watch cache is off
/// (`--watch-cache=false`), so watches are etcd's own and the compaction is
/// what expires them.
#[tokio::test]
#[ignore = "needs etcd and kube-apiserver from `./x reference`; run by `./x test` (tier apiserver)"]
async fn a_watch_expired_by_etcd_compaction_is_relisted() {
    let bins = ReferenceBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let config = ControlPlaneConfig {
        extra_apiserver_args: vec!["--watch-cache=false".into()],
        ..ControlPlaneConfig::default()
    };
    let mut cp = ControlPlane::start(&bins, &config).await.unwrap_or_else(|e| panic!("{e}"));
    cp.apply_yaml(RBAC).await.unwrap();
    cp.apply_yaml(NODE1_WEB).await.unwrap();
    cp.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n").await.unwrap();
    cp.apply_yaml(LATE).await.unwrap();
    let kubeconfig = cp.service_account_kubeconfig("kube-system", "switchyard").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = memory(dir.path(), &kubeconfig);
    d.wait_ready().await;
    wait_gauge(&d, "switchyard_services", 3, "kubernetes, web and late").await;

    // The daemon's watches were opened at revision r. Behind a stopped API
    // server: late goes, and history up to now is compacted, so r is gone.
    cp.stop_apiserver();
    assert_eq!(cp.etcd_delete(&service_key("prod", "late")).await.unwrap(), 1);
    // Enough revisions that the compaction lies past every watch's resourceVersion.
    cp.etcd_put("/registry/switchyard-test/bump", &serde_json::json!({"n": 1})).await.unwrap();
    cp.etcd_compact().await.unwrap();
    cp.start_apiserver().await.unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tails()));

    wait_gauge(&d, "switchyard_services", 2, "late is gone after the relist").await;
    eventually("the daemon said why it relisted", || async {
        let log = d.log_text();
        log.contains("(410 ") && log.lines().any(|l| l.contains("relisting") && l.contains("resource=Service"))
    })
    .await;
    eventually("healthy, no source problem", || async {
        let (code, h) = health(&d).await;
        code == 200 && h["sourceProblems"] == serde_json::json!({})
    })
    .await;
}

/// 10,000 Services (written straight into etcd, in transactions: creating
/// them through the API takes minutes on two cores) arrive in the initial
/// list in pages (kube-runtime asks for 500 at a time): the API server
/// counts the LIST requests, and the daemon holds all of them.
#[tokio::test]
#[ignore = "needs etcd and kube-apiserver from `./x reference`; run by `./x test` (tier apiserver)"]
async fn an_initial_list_of_10000_services_arrives_in_pages() {
    const N: usize = 10_000;
    let (cp, kubeconfig) = control_plane(|_| {}).await;
    cp.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: bulk}\n").await.unwrap();
    let services: Vec<(String, serde_json::Value)> = (0..N)
        .map(|i| {
            let name = format!("s-{i:05}");
            // 10.100.0.0/16, inside the service CIDR (10.96.0.0/12), clear of web's 10.96.0.10.
            let ip = format!("10.100.{}.{}", i / 250, i % 250 + 1);
            let svc = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": name,
                    "namespace": "bulk",
                    "uid": format!("00000000-0000-4000-8000-{i:012}"),
                    "creationTimestamp": "2026-01-01T00:00:00Z",
                },
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": ip,
                    "clusterIPs": [ip],
                    "ipFamilies": ["IPv4"],
                    "ipFamilyPolicy": "SingleStack",
                    "sessionAffinity": "None",
                    "internalTrafficPolicy": "Cluster",
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                },
                "status": {"loadBalancer": {}},
            });
            (service_key("bulk", &name), svc)
        })
        .collect();
    cp.etcd_put_many(&services).await.unwrap();
    let listed = eventually_count(&cp, N as i64 + 2).await;

    let lists_before = apiserver_requests(&cp, "LIST", "services").await;
    let dir = tempfile::tempdir().unwrap();
    let d = memory(dir.path(), &kubeconfig);
    wait_gauge_progress(&d, "switchyard_services", listed, "every listed Service in the desired state").await;
    let lists = apiserver_requests(&cp, "LIST", "services").await - lists_before;
    assert!(lists >= (N / 500) as f64, "the initial list came in {lists} LIST requests, not in pages of 500");
    d.wait_ready().await;
    assert_eq!(health(&d).await.0, 200);
}

/// Waits until the API server serves `want` Services (its watch cache
/// catches up with etcd asynchronously); returns the count.
async fn eventually_count(cp: &ControlPlane, want: i64) -> i64 {
    let mut last = 0;
    let mut deadline = Instant::now() + patience();
    loop {
        let n = api_services(cp).await;
        if n == want {
            return n;
        }
        if n != last {
            last = n;
            deadline = Instant::now() + patience();
        }
        assert!(Instant::now() < deadline, "the API server serves {n} Services, not {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A 60-second API server outage, switchyard and upstream kube-proxy side by
/// side: every few seconds both answer /healthz, and with the same code (200:
/// an unreachable API server leaves nothing queued and unapplied, which is
/// all kube-proxy's /healthz judges); neither loses a rule; afterwards both
/// program a Service created through the API again.
#[tokio::test]
#[ignore = "needs etcd, kube-apiserver and kube-proxy from `./x reference`; run by `./x test` (tier apiserver)"]
async fn a_60_second_outage_loses_nothing_and_healthz_answers_as_kube_proxys() {
    const OUTAGE: Duration = Duration::from_secs(60);
    assert!(testkit::is_root(), "this test needs root and `ip netns`; ./x test runs it as root");
    let (mut cp, kubeconfig) = control_plane(|_| {}).await;
    // The node's address, as a kubelet reports it (kube-proxy takes its node IP from there).
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cp.admin_client());
    let status = serde_json::json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}]}});
    nodes.patch_status("node1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&status)).await.unwrap();
    let ns = NetnsHandle::create();
    let dir = tempfile::tempdir().unwrap();
    let d = iptables_daemon(dir.path(), &kubeconfig, &ns);
    let kp_ns = NetnsHandle::create();
    let kp = KubeProxy::start(&cp, dir.path(), &kp_ns, "iptables").await;
    d.wait_ready().await;
    eventually("switchyard programs web", || async { programmed(&ns, "10.96.0.10") }).await;
    let deadline = Instant::now() + patience();
    while !(programmed(&kp_ns, "10.96.0.10") && kp.healthz().await == 200) {
        assert!(
            Instant::now() < deadline,
            "kube-proxy did not program web (healthz {})\n{}",
            kp.healthz().await,
            kp.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    cp.stop_apiserver();
    let start = Instant::now();
    let mut samples = 0;
    // The outage's length is the point of the test, not a wait for convergence.
    while start.elapsed() < OUTAGE {
        let (ours, theirs) = (health(&d).await, kp.healthz().await);
        assert_eq!(
            (ours.0, theirs),
            (200, 200),
            "/healthz {:?} into the outage: switchyard {} (kube-proxy {theirs})\nswitchyard log:\n{}\nkube-proxy log:\n{}",
            start.elapsed(),
            ours.1,
            d.log_text(),
            kp.log_text()
        );
        assert!(programmed(&ns, "10.96.0.10"), "switchyard lost web's rules {:?} into the outage", start.elapsed());
        assert!(programmed(&kp_ns, "10.96.0.10"), "kube-proxy lost web's rules {:?} into the outage", start.elapsed());
        samples += 1;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(samples >= 10, "only {samples} samples in {OUTAGE:?}");
    let (_, h) = health(&d).await;
    assert!(h["sourceProblems"].as_object().is_some_and(|p| !p.is_empty()), "the outage is reported: {h}");

    cp.start_apiserver().await.unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tails()));
    cp.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n").await.unwrap();
    cp.apply_yaml(LATE).await.unwrap();
    // Both watches back off while the API server is away (up to 30 s for switchyard).
    let deadline = Instant::now() + patience() + Duration::from_secs(30);
    loop {
        if programmed(&ns, "10.96.0.11") && programmed(&kp_ns, "10.96.0.11") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not both programmed the Service created after the outage (switchyard {}, kube-proxy {})\n{}\n{}",
            programmed(&ns, "10.96.0.11"),
            programmed(&kp_ns, "10.96.0.11"),
            d.log_text(),
            kp.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(programmed(&ns, "10.96.0.10") && programmed(&kp_ns, "10.96.0.10"), "web survived");
    assert_eq!(health(&d).await.0, 200);
}
