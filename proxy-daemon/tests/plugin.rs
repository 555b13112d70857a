//! `--proxy-mode plugin` end to end (no root): the daemon starts a fake
//! plugin, programs it from manifests, reports it down in /healthz and
//! metrics while it cannot be restarted, and sends it the full state when
//! it comes back.

mod common;

use std::path::Path;

use common::*;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 172.18.0.11}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {type: ClusterIP, clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.1.10], nodeName: node-a}]
"#;

fn events(record: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(record).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn full_batches_with_web(record: &Path) -> usize {
    events(record)
        .iter()
        .filter(|e| e["event"] == "batch" && e["full"] == true && e["services"].to_string().contains("default/web"))
        .count()
}

#[tokio::test]
async fn plugin_mode_supervises_the_plugin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("plugin.py");
    let fake = concat!(env!("CARGO_MANIFEST_DIR"), "/../backend-plugin/tests/fake_plugin.py");
    std::fs::copy(fake, &script).expect("copy the fake plugin");
    let record = dir.path().join("record.jsonl");
    let manifests = dir.path().join("m.yaml");
    std::fs::write(&manifests, MANIFESTS).expect("manifests");
    let command = format!("python3 {} --record {}", script.display(), record.display());
    // The flag sets plugin.command; the file the rest of the section (layers merge).
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "plugin:\n  restartBackoff: 100ms\n  restartBackoffMax: 400ms\n").expect("config");
    let mut daemon = Daemon::start(
        &switchyard_bin(),
        dir.path(),
        &[
            "--proxy-mode=plugin",
            &format!("--config={}", config.display()),
            "--plugin-command",
            &command,
            &format!("--source=file:{}", manifests.display()),
            "--hostname-override=node-a",
            "--min-sync-period=50ms",
        ],
    );
    daemon.wait_ready().await;
    daemon.barrier().await;
    assert_eq!(full_batches_with_web(&record), 1, "{:?}", events(&record));
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(metrics.contains("switchyard_plugin_up 1"), "{metrics}");
    assert!(daemon.get("/healthz").await.0 == 200);

    // The plugin dies and cannot be restarted: the daemon reports it down.
    std::fs::write(&script, "import sys\nsys.exit(7)\n").expect("break the plugin");
    let pid = events(&record).iter().find(|e| e["event"] == "start").and_then(|e| e["pid"].as_i64()).expect("pid");
    // The daemon started it (as the test's grandchild); we stop it by its pid.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    eventually("/healthz to fail while the plugin is down", || async {
        let (code, body) = daemon.get("/healthz").await;
        code == 503 && body.contains("\"backendDown\":\"plugin fake: ")
    })
    .await;
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(metrics.contains("switchyard_plugin_up 0"), "{metrics}");

    // Fixed: restarted with backoff, sent the full state, healthy again.
    std::fs::copy(fake, &script).expect("restore the plugin");
    eventually("the restarted plugin to get the full state", || async { full_batches_with_web(&record) == 2 }).await;
    eventually("/healthz to recover", || async { daemon.get("/healthz").await.0 == 200 }).await;
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(metrics.contains("switchyard_plugin_up 1"), "{metrics}");
    assert!(!metrics.contains("switchyard_plugin_restarts_total 0"), "{metrics}");
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}
