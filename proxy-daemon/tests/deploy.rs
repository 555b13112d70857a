//! What deploy/ ships: the configuration loads cleanly, the kustomize base
//! and overlay render, and (tier apiserver) the real API server accepts
//! every object.
#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{Daemon, NODE_A, NetnsHandle, WEB, eventually, run, switchyard_bin};
use proxy_core::{BackendContext, BackendFactory, Dataplane, DataplaneError, Registry};
use proxy_daemon::config::{FileFlavour, Layers, load};

#[derive(Debug)]
struct Stub;

#[async_trait::async_trait]
impl BackendFactory for Stub {
    fn mode(&self) -> &str {
        "iptables"
    }
    fn description(&self) -> &str {
        "stub"
    }
    async fn probe(&self, _: &BackendContext) -> Result<(), DataplaneError> {
        Ok(())
    }
    async fn build(&self, _: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError> {
        Err(DataplaneError::unavailable("iptables", "stub"))
    }
}

#[test]
fn shipped_configmap_is_a_valid_kube_proxy_configuration() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/configmap.yaml")).unwrap();
    let cm: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.conf");
    std::fs::write(&path, cm["data"]["config.conf"].as_str().unwrap()).unwrap();
    let mut registry = Registry::new();
    registry.register(Arc::new(Stub)).unwrap();
    // The real ebpf factory validates its section.
    registry.register(backend_ebpf::factory()).unwrap();
    let cfg = load(&Layers { file: Some(path), env: Some(Vec::new()), flags: Default::default() }, &registry)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.flavour, FileFlavour::KubeProxy);
    assert_eq!(cfg.mode, "iptables");
    assert_eq!(cfg.kubeconfig.as_deref(), Some(std::path::Path::new("/var/lib/switchyard/kubeconfig.conf")));
    let kubeconfig = cm["data"]["kubeconfig.conf"].as_str().unwrap();
    assert!(kubeconfig.contains("tokenFile:"), "{kubeconfig}");
    // ebpf gets the node's cgroup v2 root, so that node processes are served
    // (without it they reach no ClusterIP: issue 18, finding 7).
    assert_eq!(cfg.section("ebpf")["cgroupPath"], "/run/switchyard/cgroupv2");
}

#[test]
fn shipped_daemonset_mounts_the_host_cgroup2_root_for_ebpf() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/daemonset.yaml")).unwrap();
    let ds: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/run/switchyard/cgroupv2")
        .unwrap_or_else(|| panic!("no mount at ebpf.cgroupPath: {pod}"));
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    assert_eq!(volume["hostPath"]["path"], "/sys/fs/cgroup", "{volume}");
}

/// `kubectl kustomize DIR` (kustomize is built into kubectl), as documents;
/// `None`, said loudly, without kubectl.
fn render(dir: &str) -> Option<Vec<serde_json::Value>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/").to_string() + dir;
    let out = match std::process::Command::new("kubectl").args(["kustomize", &path]).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIPPED rendering {dir}: kubectl not found ({e})");
            return None;
        }
    };
    assert!(out.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
    Some(serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).unwrap())
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_kustomize_base_renders_what_an_operator_needs() {
    let Some(docs) = render("base") else { return };
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]);
    let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    // CoreDNS's ClusterIP is ours to program: never depend on it to start.
    assert_eq!(pod["dnsPolicy"], "Default");
    assert_eq!(pod["hostNetwork"], true);
    // A port still held by kube-proxy stops the start: never two proxies per node.
    let config = find(&docs, "ConfigMap")["data"]["config.conf"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.conf");
    std::fs::write(&path, config).unwrap();
    let cfg = load(&Layers { file: Some(path), env: Some(Vec::new()), flags: Default::default() }, &registry())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.bind_address_hard_fail, "bindAddressHardFail must be true in the shipped config");
}

#[test]
fn the_kube_proxy_labels_overlay_keeps_kube_proxys_monitoring_working() {
    let Some(docs) = render("overlays/kube-proxy-labels") else { return };
    let ds = find(&docs, "DaemonSet");
    // What kube-prometheus' kube-proxy PodMonitor and the usual alerts select.
    assert_eq!(ds["spec"]["template"]["metadata"]["labels"]["k8s-app"], "kube-proxy");
    // Never kube-proxy's own selector: the DaemonSet adopts no kube-proxy pod.
    assert_eq!(ds["spec"]["selector"]["matchLabels"], serde_json::json!({"app.kubernetes.io/name": "switchyard"}));
}

/// Every rendered object passes the real API server's validation
/// (`kubectl apply --dry-run=server`), against conformance::apiserver.
#[tokio::test]
#[ignore = "needs etcd and kube-apiserver from `./x reference`; run by `./x test` (tier apiserver)"]
async fn the_manifests_pass_server_side_validation() {
    let Some(base) = render("base") else { return };
    let Some(overlay) = render("overlays/kube-proxy-labels") else { return };
    let Some(unprivileged) = render("overlays/capabilities") else { return };
    let bins = conformance::apiserver::ReferenceBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    // As every cluster that runs kube-proxy does (kubeadm sets it): the
    // DaemonSet is privileged.
    let config = conformance::apiserver::ControlPlaneConfig {
        extra_apiserver_args: vec!["--allow-privileged=true".into()],
        ..Default::default()
    };
    let cp = conformance::apiserver::ControlPlane::start(&bins, &config).await.unwrap_or_else(|e| panic!("{e}"));
    for (name, docs) in
        [("base", base), ("overlays/kube-proxy-labels", overlay), ("overlays/capabilities", unprivileged)]
    {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("all.json");
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs});
        std::fs::write(&file, list.to_string()).unwrap();
        let out = tokio::process::Command::new("kubectl")
            .arg(format!("--kubeconfig={}", cp.admin_kubeconfig().display()))
            .args(["apply", "--dry-run=server", "--validate=strict", "-f"])
            .arg(&file)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: the API server refuses it:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cp.log_tails()
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(said.matches("(server dry run)").count(), 5, "{name}: {said}");
    }
}

/// `overlays/capabilities`, as a container runtime would run it: in a node
/// namespace, the init container's `--init-only` with every privilege, then
/// the proxy with only the overlay's capabilities (the bounding set) and
/// `/proc/sys` read-only (what an unprivileged container sees). Each mode it
/// is for becomes ready and programs the kernel; without the init step the
/// proxy stops at start, naming the sysctl.
#[testkit::needs_root]
#[tokio::test]
async fn the_capabilities_overlay_runs_with_only_its_capabilities() {
    let Some(docs) = render("overlays/capabilities") else { return };
    let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let security = &pod["containers"][0]["securityContext"];
    assert_eq!(security["privileged"], false, "{security}");
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]), "{security}");
    let added: Vec<String> = security["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("+{}", c.as_str().unwrap().to_lowercase()))
        .collect();
    let init = &pod["initContainers"][0];
    assert!(init["command"].as_array().unwrap().iter().any(|a| a == "--init-only"), "{init}");
    assert_eq!(init["securityContext"]["privileged"], true, "{init}");

    let bounding = format!("--bounding-set=-all,{}", added.join(","));
    let confined = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec \"$@\"",
        "sh",
        "setpriv",
        &bounding,
        "--inh-caps=-all",
        "--",
    ];
    let bin = switchyard_bin();
    for mode in ["iptables", "nftables"] {
        let ns = NetnsHandle::create();
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("m.yaml");
        std::fs::write(&manifests, format!("{WEB}---{NODE_A}")).unwrap();
        let source = format!("--source=file:{}", manifests.display());
        let proxy_mode = format!("--proxy-mode={mode}");
        let args = [proxy_mode.as_str(), "--hostname-override=node-a", source.as_str(), "--min-sync-period=50ms"];

        // Without the init container: kube-proxy's conntrack defaults cannot be written.
        let mut alone = Daemon::start_in_netns_with(&ns.name, &confined, &bin, dir.path(), &args);
        let code = alone.exit_code().await;
        let log = alone.log_text();
        assert!(code.is_some_and(|c| c != 0), "{mode}: started without its sysctls: {code:?}\n{log}");
        assert!(log.contains("nf_conntrack_tcp_timeout") && log.contains("Read-only"), "{mode}: {log}");

        let mut init: Vec<&str> = vec!["netns", "exec", &ns.name, bin.to_str().unwrap(), "--init-only"];
        init.extend(args);
        let (code, _, err) = run(Path::new("ip"), &init, &[]);
        assert_eq!(code, Some(0), "{mode}: --init-only: {err}");

        let mut d = Daemon::start_in_netns_with(&ns.name, &confined, &bin, dir.path(), &args);
        eventually(&format!("{mode}: ready with {added:?} only"), || {
            let (ns, addr) = (&ns, d.metrics);
            async move { matches!(ns.http("GET", addr, "/readyz").await, Ok((200, _, _))) }
        })
        .await;
        let programmed = match mode {
            "iptables" => ns.exec(&["iptables-save"]).1.contains("SWITCHYARD"),
            _ => ns.exec(&["nft", "list", "table", "ip", "switchyard"]).0,
        };
        assert!(programmed, "{mode}: nothing programmed\n{}", d.log_text());
        let log = d.log_text();
        assert!(
            !log.contains("localhost node ports will not work"),
            "{mode}: route_localnet was not set by the init step\n{log}"
        );
        if mode == "iptables" {
            let (_, localnet) = ns.exec(&["cat", "/proc/sys/net/ipv4/conf/all/route_localnet"]);
            assert_eq!(localnet.trim(), "1", "set by --init-only");
        }
        assert_eq!(d.terminate().await, Some(0), "{mode}: {}", d.log_text());
        let (code, _, err) =
            run(Path::new("ip"), &["netns", "exec", &ns.name, bin.to_str().unwrap(), "--cleanup"], &[]);
        assert_eq!(code, Some(0), "{mode}: --cleanup: {err}");
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(Arc::new(Stub)).unwrap();
    registry.register(backend_ebpf::factory()).unwrap();
    registry
}
