//! The daemon as a black box: exit codes, configuration errors, the file
//! source, admin endpoints, healthCheckNodePort servers, inspect, cleanup.
//! Runs the example custom build (its "memory" dataplane programs nothing),
//! so no kernel state is touched.
#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use common::*;
use serde_json::Value;

const FAST: [&str; 2] = ["--min-sync-period=50ms", "--hostname-override=node-a"];

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn usage_error_exits_2() {
    let (code, _, err) = run(&switchyard_bin(), &["--no-such-flag"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
    let (code, out, _) = run(&switchyard_bin(), &["--help"], &[]);
    assert_eq!(code, Some(0));
    for flag in
        ["--proxy-mode", "--kubeconfig", "--master", "--iptables-sync-period", "--healthz-bind-address", "--cleanup"]
    {
        assert!(out.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn config_errors_are_all_listed_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "config.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: memory\n\
         clusterCidr: 10.0.0.0/8\niptables:\n  syncPeriod: often\nmemory:\n  colour: blue\n",
    );
    let cfg = cfg.display().to_string();
    let (code, _, err) = run(
        &memory_bin(),
        &["--config", &cfg, "--healthz-bind-address=nowhere"],
        &[("SWITCHYARD_MASQUERADE_ALL", "perhaps")],
    );
    assert_eq!(code, Some(2), "{err}");
    for expected in [
        "iptables.syncPeriod: time: invalid duration \"often\"",
        "memory.colour: unknown field",
        "healthzBindAddress: \"nowhere\": must be IP:port",
        "masqueradeAll: invalid type: string \"perhaps\", expected a boolean",
        "(from command line)",
        "(from environment)",
        &format!("(from config file {cfg})"),
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // An unknown field of kube-proxy's own schema is a warning, as kube-proxy's
    // lenient decoding makes it (the backend's own section stays strict).
    assert!(!err.contains("clusterCidr"), "{err}");
}

#[test]
fn unknown_mode_and_missing_files_exit_2() {
    let (code, _, err) = run(&switchyard_bin(), &["--proxy-mode=warp"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("mode: \"warp\": must be iptables, ipvs, nftables or blank"), "{err}");
    let (code, _, err) = run(&memory_bin(), &["--proxy-mode=memory", "--config=/nonexistent/kp.yaml"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/kp.yaml"), "{err}");
    let port = format!("--metrics-bind-address=127.0.0.1:{}", free_port());
    let (code, _, err) =
        run(&memory_bin(), &["--proxy-mode=memory", "--kubeconfig=/nonexistent/kubeconfig", &port], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("kubeconfig /nonexistent/kubeconfig"), "{err}");
}

#[test]
fn unavailable_mode_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "c.yaml", "mode: memory\nmemory:\n  available: false\n");
    let m = write(dir.path(), "m.yaml", WEB);
    let (code, _, err) = run(
        &memory_bin(),
        &[
            &format!("--config={}", cfg.display()),
            &format!("--source=file:{}", m.display()),
            &format!("--metrics-bind-address=127.0.0.1:{}", free_port()),
            &format!("--healthz-bind-address=127.0.0.1:{}", free_port()),
        ],
        &[],
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("proxy mode memory is not available on this node: memory.available is false"), "{err}");
    assert!(!err.contains("running"), "nothing may start: {err}");
}

#[test]
fn cleanup_exits_0() {
    // --cleanup removes every mode's objects and kube-proxy's: as root, in a
    // namespace of the test's own, never the machine's (without root it can
    // change nothing anywhere).
    let ns = nix::unistd::Uid::effective().is_root().then(NetnsHandle::create);
    let netns = ns.as_ref().map(|ns| format!("--netns={}", ns.name));
    let mut args = vec!["--cleanup"];
    args.extend(netns.as_deref());
    let (code, _, err) = run(&memory_bin(), &args, &[("SWITCHYARD_MODE", "memory")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("cleaned up"), "{err}");
}

#[tokio::test]
async fn file_source_admin_endpoints_and_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "web.yaml", WEB);
    write(&manifests, "node.yaml", NODE_A);
    let src = format!("--source=file:{}", manifests.display());
    let mut d = Daemon::start(&memory_bin(), dir.path(), &["--proxy-mode=memory", &src, FAST[0], FAST[1], "-v", "2"]);
    d.wait_ready().await;

    // The first log line is build info.
    let log = d.log_text();
    let first = log.lines().next().unwrap_or_default();
    assert!(first.contains("switchyard") && first.contains("version"), "first line: {first}");

    // /healthz, /livez, /readyz, on both ports.
    let (code, head, body) = http_async("GET", d.healthz, "/healthz", "").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["lastUpdated"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
    assert!(v["currentTime"].is_string() && v["nodeEligible"] == true, "{body}");
    assert_eq!(http_async("GET", d.healthz, "/livez", "").await.unwrap().0, 200);
    assert_eq!(d.get("/readyz").await.0, 200);

    // The desired state, and a change on disk.
    let (_, state) = d.get("/debug/state").await;
    assert!(state.contains("10.96.0.10") && state.contains("10.0.1.1:8080"), "{state}");
    write(&manifests, "web.yaml", &WEB.replace("10.0.1.1", "10.0.1.2"));
    d.barrier().await;
    let (_, state) = d.get("/debug/state").await;
    assert!(state.contains("10.0.1.2:8080") && !state.contains("10.0.1.1:8080"), "{state}");

    // A malformed file: reported, nothing programmed is lost, the rest still updates.
    write(
        &manifests,
        "web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: eighty}]\n",
    );
    write(&manifests, "db.yaml", &WEB.replace("web", "db").replace("10.96.0.10", "10.96.0.11"));
    let body = d.barrier().await;
    assert!(body.contains("web.yaml, document 1 (Service web): spec.ports[0].port"), "{body}");
    let (_, state) = d.get("/debug/state").await;
    assert!(state.contains("10.0.1.2:8080"), "web kept: {state}");
    assert!(state.contains("10.96.0.11"), "db added: {state}");
    let (_, metrics) = d.get("/metrics").await;
    assert!(metrics.contains("switchyard_manifest_errors 1"), "{metrics}");

    // Metrics: kube-proxy's names and ours.
    let (code, metrics) = d.get("/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_network_programming_duration_seconds",
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
        "kubeproxy_proxy_healthz_total{code=\"200\"}",
        "switchyard_build_info{",
        "switchyard_services 2",
        "switchyard_ready 1",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }

    // Runtime log level.
    let (code, _, body) = http_async("PUT", d.metrics, "/debug/flags/v", "4").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(d.get("/loglevel").await.1.trim(), "debug");
    let (code, _, _) = http_async("PUT", d.metrics, "/loglevel", "info,proxy_core=debug").await.unwrap();
    assert_eq!(code, 200);
    let (code, _, _) = http_async("PUT", d.metrics, "/loglevel", "=[").await.unwrap();
    assert_eq!(code, 400);
    let (code, configz) = d.get("/configz").await;
    assert_eq!(code, 200);
    assert!(configz.contains("\"mode\":\"memory\""), "{configz}");

    // SIGTERM: a clean stop.
    assert_eq!(d.terminate().await, Some(0), "log:\n{}", d.log_text());
    assert!(d.log_text().contains("stopped cleanly; programmed rules left in place"));
}

/// Finding 9 (second bullet): the debug handlers are off unless asked for,
/// with a 404 naming the flag; `enableDebugHandlers: true` in the
/// configuration file turns them on, like the flag.
#[tokio::test]
async fn debug_handlers_are_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "web.yaml", WEB);
    write(&manifests, "node.yaml", NODE_A);
    let src = format!("--source=file:{}", manifests.display());
    let requests = [
        ("GET", "/configz", ""),
        ("GET", "/debug/state", ""),
        ("POST", "/debug/barrier?timeout=10s", ""),
        ("PUT", "/debug/flags/v", "4"),
        ("GET", "/loglevel", ""),
        ("PUT", "/loglevel", "debug"),
    ];

    let mut d = Daemon::start_without_debug_handlers(
        &memory_bin(),
        dir.path(),
        &["--proxy-mode=memory", &src, FAST[0], FAST[1]],
    );
    d.wait_ready().await;
    for (method, path, body) in requests {
        let (code, _, text) = http_async(method, d.metrics, path, body).await.unwrap();
        assert_eq!(code, 404, "{method} {path} must be refused by default: {text}");
        assert!(text.contains("--enable-debug-handlers"), "{method} {path}: {text}");
    }
    assert_eq!(d.get("/metrics").await.0, 200, "metrics are served");
    assert_eq!(d.get("/healthz").await.0, 200, "health is served on the metrics port too");
    assert!(d.log_text().contains("debug handlers off"), "{}", d.log_text());
    assert_eq!(d.terminate().await, Some(0));

    let config = write(dir.path(), "config.yaml", "enableDebugHandlers: true\n");
    let cfg = format!("--config={}", config.display());
    let mut d = Daemon::start_without_debug_handlers(
        &memory_bin(),
        dir.path(),
        &["--proxy-mode=memory", &src, &cfg, FAST[0], FAST[1]],
    );
    d.wait_ready().await;
    for (method, path, body) in requests {
        let (code, _, text) = http_async(method, d.metrics, path, body).await.unwrap();
        assert_eq!(code, 200, "{method} {path} must be served with enableDebugHandlers: {text}");
    }
    assert_eq!(d.terminate().await, Some(0));
}

#[tokio::test]
async fn json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let m = write(dir.path(), "m.yaml", &format!("{WEB}---{NODE_A}"));
    let src = format!("--source=file:{}", m.display());
    let mut d = Daemon::start(
        &memory_bin(),
        dir.path(),
        &["--proxy-mode=memory", &src, FAST[0], FAST[1], "--logging-format=json"],
    );
    d.wait_ready().await;
    assert_eq!(d.terminate().await, Some(0));
    let log = d.log_text();
    let first: Value = serde_json::from_str(log.lines().next().unwrap_or_default()).expect("JSON log line");
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"), "{log}");
}

#[tokio::test]
async fn unreachable_api_server_keeps_running_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, proxy_daemon::fake_apiserver::kubeconfig_text(&format!("http://127.0.0.1:{}", free_port())))
        .unwrap();
    let mut d = Daemon::start(
        &memory_bin(),
        dir.path(),
        &["--proxy-mode=memory", &format!("--kubeconfig={}", kc.display()), FAST[1]],
    );
    eventually("the watch failure is logged", || {
        let log = d.log_text();
        async move { log.contains("watch failed; retrying with backoff") }
    })
    .await;
    assert_eq!(d.get("/readyz").await.0, 503, "not ready without the initial lists");
    assert_eq!(http_async("GET", d.healthz, "/healthz", "").await.unwrap().0, 200, "healthy: nothing is late");
    assert_eq!(d.terminate().await, Some(0));
}

#[tokio::test]
async fn health_check_node_ports() {
    let dir = tempfile::tempdir().unwrap();
    let hc_port = free_port();
    let svc = lb_service(hc_port);
    let m = write(dir.path(), "lb.yaml", &format!("{svc}---{NODE_A}"));
    let src = format!("--source=file:{}", m.display());
    let mut d = Daemon::start(
        &memory_bin(),
        dir.path(),
        &["--proxy-mode=memory", &src, FAST[0], FAST[1], "--nodeport-addresses=127.0.0.0/8"],
    );
    d.wait_ready().await;
    let hc: std::net::SocketAddr = format!("127.0.0.1:{hc_port}").parse().unwrap();
    eventually("healthCheckNodePort answers 200", || async move {
        matches!(http_async("GET", hc, "/", "").await, Ok((200, _, _)))
    })
    .await;
    let (_, head, body) = http_async("GET", hc, "/anything", "").await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["service"]["namespace"], "prod");
    assert_eq!(v["service"]["name"], "lb");
    assert_eq!(v["localEndpoints"], 1);
    assert_eq!(v["serviceProxyHealthy"], true);
    assert!(head.to_ascii_lowercase().contains("x-load-balancing-endpoint-weight: 1"), "{head}");

    // The endpoint moves to another node: 503 with zero local endpoints.
    write(dir.path(), "lb.yaml", &format!("{}---{NODE_A}", svc.replace("nodeName: node-a", "nodeName: node-b")));
    d.barrier().await;
    eventually("healthCheckNodePort answers 503", || async move {
        matches!(http_async("GET", hc, "/", "").await, Ok((503, _, b)) if b.contains("\"localEndpoints\":0"))
    })
    .await;

    // The Service goes away: the server closes.
    write(dir.path(), "lb.yaml", NODE_A);
    d.barrier().await;
    eventually("healthCheckNodePort closes", || async move { http_async("GET", hc, "/", "").await.is_err() }).await;
    assert_eq!(d.terminate().await, Some(0));
}

/// The cluster autoscaler taints a node before deleting it: /healthz fails
/// (load balancers drain the node), /livez does not, and the health-check
/// node ports keep answering for their local endpoints, as kube-proxy's.
#[tokio::test]
async fn a_node_the_autoscaler_will_delete_fails_healthz_only() {
    let dir = tempfile::tempdir().unwrap();
    let hc_port = free_port();
    let tainted = format!(
        "{NODE_A}spec:\n  taints: [{{key: ToBeDeletedByClusterAutoscaler, value: \"1733230000\", effect: NoSchedule}}]\n"
    );
    let m = write(dir.path(), "lb.yaml", &format!("{}---{NODE_A}", lb_service(hc_port)));
    let src = format!("--source=file:{}", m.display());
    let mut d = Daemon::start(
        &memory_bin(),
        dir.path(),
        &["--proxy-mode=memory", &src, FAST[0], FAST[1], "--nodeport-addresses=127.0.0.0/8"],
    );
    d.wait_ready().await;
    let healthz = d.healthz;
    let (code, _, body) = http_async("GET", healthz, "/healthz", "").await.unwrap();
    assert_eq!(code, 200, "{body}");
    write(dir.path(), "lb.yaml", &format!("{}---{tainted}", lb_service(hc_port)));
    d.barrier().await;
    eventually("/healthz fails for the tainted node", || async move {
        matches!(http_async("GET", healthz, "/healthz", "").await, Ok((503, _, b)) if b.contains("\"nodeEligible\":false"))
    })
    .await;
    let (code, _, body) = http_async("GET", healthz, "/livez", "").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains("nodeEligible"), "{body}");
    let hc: std::net::SocketAddr = format!("127.0.0.1:{hc_port}").parse().unwrap();
    let (code, _, body) = http_async("GET", hc, "/", "").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["serviceProxyHealthy"], true, "{body}");
    assert_eq!(d.terminate().await, Some(0));
}

#[test]
fn inspect_reports_differences() {
    let dir = tempfile::tempdir().unwrap();
    let m = write(dir.path(), "m.yaml", &format!("{WEB}---{NODE_A}"));
    let src = format!("--source=file:{}", m.display());
    // A fresh "memory" dataplane holds nothing: every desired frontend is missing.
    let (code, out, err) = run(&memory_bin(), &["inspect", "-o", "json", "--proxy-mode=memory", &src, FAST[1]], &[]);
    assert_eq!(code, Some(1), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["mode"], "memory");
    assert!(v["differences"][0]["Missing"]["frontend"]["port"] == 80, "{out}");
    let (code, out, err) = run(&memory_bin(), &["inspect", "--no-diff", "--proxy-mode=memory", &src], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("FRONTEND"), "{out}");
}

#[tokio::test]
async fn invalid_fields_are_skipped_and_named_failed_syncs_retry() {
    let dir = tempfile::tempdir().unwrap();
    let bad_slice = WEB.replace("web", "api").replace("10.96.0.10", "10.96.0.30").replace("[10.0.1.1]", "[10.0.1.999]");
    let m = write(dir.path(), "m.yaml", &format!("{WEB}---{bad_slice}---{NODE_A}"));
    let src = format!("--source=file:{}", m.display());
    // The backend section through the environment: fail the first two syncs.
    let mut d = Daemon::start_with_env(
        &memory_bin(),
        dir.path(),
        &["--proxy-mode=memory", &src, FAST[0], FAST[1]],
        &[("SWITCHYARD_MEMORY__FAIL_SYNCS", "2")],
    );
    d.wait_ready().await;
    let log = d.log_text();
    assert!(log.contains("EndpointSlice default/api-1: endpoints[0].addresses[0]"), "the bad field is named:\n{log}");
    assert!(log.contains("sync failed; previous state stays in place, retrying"), "{log}");
    let (_, state) = d.get("/debug/state").await;
    assert!(state.contains("10.0.1.1:8080"), "everything else is served: {state}");
    let (_, metrics) = d.get("/metrics").await;
    assert!(metrics.contains("switchyard_invalid_objects_total{kind=\"EndpointSlice\"} 1"), "{metrics}");
    assert!(metrics.contains("switchyard_sync_failures_total{backend=\"memory\"} 2"), "{metrics}");
    assert_eq!(d.terminate().await, Some(0));
}

/// The count of a histogram in OpenMetrics text (`NAME_count N`).
/// The sample count of a histogram, summed over its labels (`ip_family`).
fn histogram_count(metrics: &str, name: &str) -> u64 {
    let prefix = format!("{name}_count");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|rest| rest.starts_with([' ', '{']))
        .filter_map(|rest| rest.rsplit(' ').next().and_then(|n| n.trim().parse::<u64>().ok()))
        .sum()
}

#[tokio::test]
async fn an_endpoint_change_in_a_file_is_a_network_programming_sample() {
    // Issue 18, finding 9: the histogram stayed empty with the file source
    // (manifests carry no trigger time; the file's mtime is one).
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "web.yaml", WEB);
    write(&manifests, "node.yaml", NODE_A);
    let src = format!("--source=file:{}", manifests.display());
    let mut d = Daemon::start(&memory_bin(), dir.path(), &["--proxy-mode=memory", &src, FAST[0], FAST[1]]);
    d.wait_ready().await;
    let name = "kubeproxy_network_programming_duration_seconds";
    assert_eq!(histogram_count(&d.get("/metrics").await.1, name), 0, "the initial list is no sample");

    write(&manifests, "web.yaml", &WEB.replace("10.0.1.1", "10.0.1.2"));
    d.barrier().await;
    let (_, metrics) = d.get("/metrics").await;
    assert_eq!(histogram_count(&metrics, name), 1, "{metrics}");
    // A Service change alone is no endpoint change: no sample.
    write(&manifests, "web.yaml", &WEB.replace("10.0.1.1", "10.0.1.2").replace("port: 80,", "port: 81,"));
    d.barrier().await;
    assert_eq!(histogram_count(&d.get("/metrics").await.1, name), 1);
    assert_eq!(d.terminate().await, Some(0));
}

#[test]
fn inspect_refuses_to_diff_against_broken_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let m = write(dir.path(), "m.yaml", &format!("{WEB}---{NODE_A}---\nkind: [\n"));
    let src = format!("--source=file:{}", m.display());
    let (code, out, err) = run(&memory_bin(), &["inspect", "--proxy-mode=memory", &src, FAST[1]], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(out.contains("The desired state is unknown: the manifests have 1 problems"), "{out}");
    assert!(out.contains(&format!("{}, document 4: not valid YAML", m.display())), "{out}");
    assert!(!out.contains("Missing"), "no diff against an incomplete view: {out}");
}
