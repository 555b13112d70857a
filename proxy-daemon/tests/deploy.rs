//! The configuration shipped in deploy/ loads cleanly.
#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::sync::Arc;

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
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/configmap.yaml")).unwrap();
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
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/daemonset.yaml")).unwrap();
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
