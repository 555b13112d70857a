use super::*;
use std::sync::Arc;

use proxy_core::{BackendContext, BackendFactory, Dataplane, DataplaneError};

#[derive(Debug)]
struct Fake(&'static str);

#[async_trait::async_trait]
impl BackendFactory for Fake {
    fn mode(&self) -> &str {
        self.0
    }
    fn description(&self) -> &str {
        "test"
    }
    fn validate(&self, section: &Value) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(m) = section.as_object() {
            for k in m.keys() {
                if !["masqueradeBit", "localhostNodePorts", "scheduler", "strictARP", "excludeCIDRs", "tcpTimeout"]
                    .contains(&k.as_str())
                {
                    out.push(format!("{}: unknown field `{k}`, expected one of ...", self.0));
                }
            }
        }
        out
    }
    async fn probe(&self, _ctx: &BackendContext) -> Result<(), DataplaneError> {
        Ok(())
    }
    async fn build(&self, _ctx: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError> {
        Err(DataplaneError::unavailable(self.0, "test"))
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(Fake("iptables"))).unwrap();
    r.register(Arc::new(Fake("ipvs"))).unwrap();
    r
}

fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn layers(file: Option<PathBuf>, env: &[(&str, &str)], flags: Value) -> Layers {
    Layers {
        file,
        env: Some(env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        flags: flags.as_object().cloned().unwrap_or_default(),
    }
}

fn kp(body: &str) -> String {
    format!("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}")
}

fn problems(text: &str) -> Vec<String> {
    match load_yaml_str(text, &registry()) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.iter().map(|p| format!("{}: {}", p.path, p.message)).collect(),
    }
}

#[test]
fn defaults() {
    let c = load(&layers(None, &[], Value::Null), &registry()).unwrap();
    assert_eq!(c.mode, "iptables");
    assert_eq!(c.healthz_bind_address, Some("0.0.0.0:10256".parse().unwrap()));
    assert_eq!(c.metrics_bind_address, Some("127.0.0.1:10249".parse().unwrap()));
    assert_eq!(c.sync_period, Duration::from_secs(30));
    assert_eq!(c.min_sync_period, Duration::from_secs(1));
    assert_eq!(c.source, SourceSpec::Kube);
    // kube-proxy's defaults: conntrack max 32768 per core (min 131072), 24h/1h TCP timeouts.
    assert_eq!(c.conntrack.max_per_core, 32768);
    assert_eq!(c.conntrack.min, 131072);
    assert_eq!(c.conntrack.tcp_established_timeout, Duration::from_secs(86400));
    assert_eq!(c.conntrack.tcp_close_wait_timeout, Duration::from_secs(3600));
    assert_eq!(c.oom_score_adj, -999);
    assert_eq!(c.local_detection, LocalDetection::ClusterCidr);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn layers_in_order_file_env_flags() {
    let (_d, path) = file("mode: ipvs\nhostnameOverride: from-file\nclusterCIDR: 10.0.0.0/8\nsyncPeriod: 10s\n");
    let l = layers(
        Some(path.clone()),
        &[("SWITCHYARD_HOSTNAME_OVERRIDE", "From-Env"), ("SWITCHYARD_SYNC_PERIOD", "20s")],
        serde_json::json!({"syncPeriod": "40s"}),
    );
    let c = load(&l, &registry()).unwrap();
    assert_eq!(c.mode, "ipvs", "file beats defaults");
    assert_eq!(c.hostname_override.as_deref(), Some("from-env"), "env beats file; lowercased");
    assert_eq!(c.sync_period, Duration::from_secs(40), "flags beat env");
    assert_eq!(c.cluster_cidrs, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
}

#[test]
fn env_keys_nest_and_keep_kube_proxy_acronyms() {
    assert_eq!(env_key("cluster_cidr"), "clusterCIDR");
    assert_eq!(env_key("iptables__masquerade_bit"), "iptables.masqueradeBit");
    assert_eq!(env_key("ipvs__strict_arp"), "ipvs.strictARP");
    assert_eq!(env_key("CLIENT_CONNECTION__KUBECONFIG"), "clientConnection.kubeconfig");
    let l = layers(
        None,
        &[("SWITCHYARD_IPTABLES__MASQUERADE_BIT", "13"), ("SWITCHYARD_TEST_PATIENCE_MS", "5")],
        Value::Null,
    );
    let c = load(&l, &registry()).unwrap();
    assert_eq!(c.section("iptables")["masqueradeBit"], 13);
}

#[test]
fn reads_a_kubeadm_kube_proxy_configmap() {
    let (_d, path) = file(KUBEADM_CONFIG);
    let c = load(&layers(Some(path), &[], Value::Null), &registry()).unwrap();
    assert_eq!(c.flavour, FileFlavour::KubeProxy);
    assert_eq!(c.mode, "iptables", "empty mode is the default");
    assert_eq!(c.kubeconfig.as_deref(), Some(std::path::Path::new("/var/lib/kube-proxy/kubeconfig.conf")));
    assert_eq!(c.cluster_cidrs, vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]);
    assert_eq!(c.sync_period, DEFAULT_SYNC_PERIOD, "0s means default");
    assert_eq!(c.healthz_bind_address, Some(DEFAULT_HEALTHZ_BIND_ADDRESS), "empty means default");
    assert!(c.masquerade_all, "iptables.masqueradeAll is honoured");
    assert_eq!(c.section("iptables"), serde_json::json!({"masqueradeBit": 14}), "nulls are defaults");
    assert_eq!(c.conntrack.max_per_core, 32768, "maxPerCore: null is kube-proxy's default");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

/// Issue 14's findings: each of these exited 2; each loads now, meaning what kube-proxy makes of it.
#[test]
fn the_configurations_that_used_to_exit_2_load() {
    let c = load_yaml_str(
        &kp("mode: ipvs\nipvs:\n  strictARP: true\n  scheduler: \"\"\n  tcpTimeout: 900s\n  excludeCIDRs: [10.9.0.0/16]\n"),
        &registry(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.section("ipvs")["strictARP"], true);
    assert_eq!(c.section("ipvs")["tcpTimeout"], "900s");
    assert_eq!(c.min_sync_period, Duration::ZERO, "kube-proxy defaults no minSyncPeriod in ipvs mode");

    let c = load_yaml_str(&kp("detectLocalMode: NodeCIDR\n"), &registry()).unwrap();
    assert_eq!(c.local_detection, LocalDetection::NodeCidr);

    let c = load_yaml_str(&kp("metricsBindAddress: 0.0.0.0\nhealthzBindAddress: \"::\"\n"), &registry()).unwrap();
    assert_eq!(c.metrics_bind_address, Some("0.0.0.0:10249".parse().unwrap()), "kube-proxy appends the port");
    assert_eq!(c.healthz_bind_address, Some("[::]:10256".parse().unwrap()));

    let c = load_yaml_str(&kp("windowsRunAsService: true\n"), &registry()).unwrap();
    assert!(c.warnings.iter().any(|w| w.path == "windowsRunAsService"), "{:?}", c.warnings);

    let c = load_yaml_str(&kp("mode: nftables\n"), &registry()).unwrap();
    assert!(c.unavailable.as_deref().unwrap_or_default().contains("nftables is not built yet"), "{:?}", c.unavailable);
    assert_eq!(c.node_port_addresses, NodePortSpec::primary(), "nftables mode defaults to primary");
}

#[test]
fn an_unknown_field_warns_in_kube_proxys_file_and_fails_in_ours() {
    let c = load_yaml_str(&kp("bogus: 1\nconntrack:\n  typo: 2\niptables:\n  colour: blue\n"), &registry()).unwrap();
    let paths: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
    for p in ["bogus", "conntrack.typo", "iptables.colour"] {
        assert!(paths.contains(&p), "{p} not warned: {paths:?}");
    }
    assert!(!c.section("iptables").as_object().unwrap().contains_key("colour"), "dropped before the backend");
    let p = problems("bogus: 1\nconntrack:\n  typo: 2\n");
    assert!(p.contains(&"bogus: unknown field".to_string()), "{p:?}");
    assert!(p.contains(&"conntrack.typo: unknown field".to_string()), "{p:?}");
}

/// What kube-proxy rejects is rejected, with kube-proxy's reason (validation.go).
#[test]
fn kube_proxys_rejections_with_its_reasons() {
    let cases: &[(&str, &str, &str)] = &[
        ("conntrack:\n  maxPerCore: -1\n", "conntrack.maxPerCore", "must be greater than or equal to 0"),
        ("conntrack:\n  udpTimeout: -5s\n", "conntrack.udpTimeout", "must be greater than or equal to 0"),
        ("iptables:\n  masqueradeBit: 32\n", "iptables.masqueradeBit", "must be within the range [0, 31]"),
        ("oomScoreAdj: 1001\n", "oomScoreAdj", "must be within the range [-1000, 1000]"),
        ("iptables:\n  syncPeriod: -1s\n", "iptables.syncPeriod", "must be greater than 0"),
        (
            "iptables:\n  syncPeriod: 1s\n  minSyncPeriod: 2s\n",
            "iptables.syncPeriod",
            "must be greater than or equal to iptables.minSyncPeriod",
        ),
        ("bindAddress: nowhere\n", "bindAddress", "not a valid textual representation of an IP address"),
        ("healthzBindAddress: 1.2.3.4:99999\n", "healthzBindAddress", "must be a valid port"),
        ("metricsBindAddress: host.example:10249\n", "metricsBindAddress", "must be a valid IP"),
        ("detectLocalMode: Magic\n", "detectLocalMode", "Unsupported value: \"Magic\""),
        ("detectLocalMode: BridgeInterface\n", "detectLocal.bridgeInterface", "must not be empty"),
        ("clusterCIDR: 10.0.0.0/8,10.1.0.0/16\n", "clusterCIDR", "dual-stack pair"),
        ("clusterCIDR: 10.0.0.0/33\n", "clusterCIDR[0]", "must be a valid CIDR block"),
        ("nodePortAddresses: [primary, primary]\n", "nodePortAddresses[1]", "Duplicate value"),
        ("nodePortAddresses: [bogus]\n", "nodePortAddresses[0]", "one of the keywords 'primary', 'localhost', 'all'"),
        ("mode: ipvs\nipvs:\n  tcpTimeout: -1s\n", "ipvs.tcpTimeout", "must be greater than or equal to 0"),
        ("mode: ipvs\nipvs:\n  excludeCIDRs: [x]\n", "ipvs.excludeCIDRs[0]", "must be a valid CIDR"),
        ("clientConnection:\n  burst: -1\n", "clientConnection.burst", "must be greater than or equal to 0"),
        ("logging:\n  format: xml\n", "logging.format", "Unsupported log format"),
        ("showHiddenMetricsForVersion: \"1.20\"\n", "showHiddenMetricsForVersion", "only the previous minor version"),
        ("configSyncPeriod: -1m\n", "configSyncPeriod", "must be greater than 0"),
        ("iptables:\n  syncPeriod: soon\n", "iptables.syncPeriod", "time: invalid duration \"soon\""),
        ("mode: kernelspace\n", "mode", "\"kernelspace\": must be iptables, ipvs, nftables or blank"),
    ];
    for (body, path, reason) in cases {
        let p = problems(&kp(body));
        assert!(
            p.iter().any(|p| p.starts_with(&format!("{path}: ")) && p.contains(reason)),
            "{body:?}: expected {path}: ...{reason}..., got {p:?}"
        );
    }
}

#[test]
fn the_deprecated_port_flags_turn_a_server_off_or_move_it() {
    let c = load(&layers(None, &[], serde_json::json!({"healthzPort": 0, "metricsPort": 9999})), &registry()).unwrap();
    assert_eq!(c.healthz_bind_address, None);
    assert_eq!(c.metrics_bind_address, Some("127.0.0.1:9999".parse().unwrap()));
}

#[test]
fn sync_periods_come_from_the_modes_section() {
    let c = load_yaml_str(
        &kp("mode: ipvs\niptables: {syncPeriod: 5s}\nipvs: {syncPeriod: 7s, minSyncPeriod: 2s}\n"),
        &registry(),
    )
    .unwrap();
    assert_eq!((c.sync_period, c.min_sync_period), (Duration::from_secs(7), Duration::from_secs(2)));
    let c = load_yaml_str(&kp("iptables: {syncPeriod: 5s}\nipvs: {syncPeriod: 7s}\n"), &registry()).unwrap();
    assert_eq!(c.sync_period, Duration::from_secs(5));
    // The effective document puts them where kube-proxy writes them.
    assert_eq!(c.kube_proxy["iptables"]["syncPeriod"], "5s");
    assert_eq!(c.kube_proxy["ipvs"]["syncPeriod"], "0s");
}

#[test]
fn node_port_keywords_combine() {
    let ips: Vec<IpAddr> = vec!["192.168.1.5".parse().unwrap()];
    let c = load_yaml_str(&kp("nodePortAddresses: [primary, localhost, 10.0.0.0/8]\n"), &registry()).unwrap();
    match c.node_port_addresses.resolve(&ips) {
        NodePortAddresses::Cidrs(cidrs) => {
            for want in ["10.0.0.0/8", "127.0.0.0/8", "::1/128", "192.168.1.5/32"] {
                assert!(cidrs.contains(&want.parse().unwrap()), "{want} in {cidrs:?}");
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(NodePortSpec::primary().resolve(&ips), NodePortAddresses::Primary);
    let c = load_yaml_str(&kp("nodePortAddresses: [all, primary]\n"), &registry()).unwrap();
    assert_eq!(c.node_port_addresses.resolve(&ips), NodePortAddresses::All);
}

#[test]
fn ipvs_mode_hands_the_backend_iptables_masquerade_bit() {
    let c = load_yaml_str(&kp("mode: ipvs\niptables: {masqueradeBit: 12}\n"), &registry()).unwrap();
    assert_eq!(c.section("ipvs")["masqueradeBit"], 12);
}

#[test]
fn flags_beside_a_kube_proxy_file_are_applied_and_named() {
    let (_d, path) = file(&kp("mode: iptables\n"));
    let l = layers(Some(path), &[], serde_json::json!({"mode": "ipvs", "hostnameOverride": "n1"}));
    let c = load(&l, &registry()).unwrap();
    assert_eq!(c.mode, "ipvs");
    let paths: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["mode"], "kube-proxy honours --hostname-override with --config; not --proxy-mode");
}

#[test]
fn lists_every_problem_with_its_path_and_origin() {
    let (_d, path) = file(
        "mode: iptables\nhealthzBindAdress: 0.0.0.0:1\nsyncPeriod: soon\nnodePortAddresses: [10.0.0.0/8, bogus]\n\
         iptables:\n  masqueradeBit: 14\n  colour: blue\nlogging:\n  format: xml\n",
    );
    let l = layers(
        Some(path.clone()),
        &[("SWITCHYARD_MASQUERADE_ALL", "maybe")],
        serde_json::json!({"clusterCIDR": "10.0.0.0/33"}),
    );
    let err = load(&l, &registry()).unwrap_err();
    let text = err.to_string();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "healthzBindAdress",
        "syncPeriod",
        "nodePortAddresses[1]",
        "iptables.colour",
        "logging.format",
        "masqueradeAll",
        "clusterCIDR[0]",
    ] {
        assert!(paths.contains(&expected), "{expected} missing in {text}");
    }
    assert!(text.contains("unknown field"), "{text}");
    assert!(text.contains(&format!("config file {}", path.display())), "{text}");
    assert!(text.contains("from command line"), "{text}");
    assert!(text.contains("from environment"), "{text}");
}

#[test]
fn a_backend_section_is_validated_by_its_backend() {
    let p = problems("iptables:\n  colour: blue\n");
    assert_eq!(p, ["iptables.colour: unknown field"]);
}

#[test]
fn debug_handlers_are_off_unless_asked_for() {
    assert!(!load(&layers(None, &[], Value::Null), &registry()).unwrap().enable_debug_handlers);
    let (_d, path) = file("enableDebugHandlers: true\n");
    assert!(load(&layers(Some(path), &[], Value::Null), &registry()).unwrap().enable_debug_handlers);
    let env = [("SWITCHYARD_ENABLE_DEBUG_HANDLERS", "true")];
    assert!(load(&layers(None, &env, Value::Null), &registry()).unwrap().enable_debug_handlers);
    let flags = serde_json::json!({"enableDebugHandlers": true});
    assert!(load(&layers(None, &[], flags), &registry()).unwrap().enable_debug_handlers);
    let err = load_yaml_str("enableDebugHandlers: sure\n", &registry()).unwrap_err();
    assert_eq!(err.problems[0].path, "enableDebugHandlers");
}

#[test]
fn kube_proxy_leftovers_stay_unless_asked_for() {
    assert!(!load(&layers(None, &[], Value::Null), &registry()).unwrap().remove_kube_proxy_leftovers);
    let (_d, path) = file("removeKubeProxyLeftovers: true\n");
    let cfg = load(&layers(Some(path), &[], Value::Null), &registry()).unwrap();
    assert!(cfg.remove_kube_proxy_leftovers);
    // The file reads back with it (`--write-config-to`, /configz).
    assert_eq!(cfg.kube_proxy["removeKubeProxyLeftovers"], true);
    let cli =
        <crate::cli::Cli as clap::Parser>::try_parse_from(["switchyard", "--remove-kube-proxy-leftovers"]).unwrap();
    assert!(
        load(&layers(None, &[], Value::Object(cli.flags.to_map())), &registry()).unwrap().remove_kube_proxy_leftovers
    );
    let err = load_yaml_str("removeKubeProxyLeftovers: sure\n", &registry()).unwrap_err();
    assert_eq!(err.problems[0].path, "removeKubeProxyLeftovers");
}

#[test]
fn unknown_mode_says_kube_proxys_words() {
    let err = load(&layers(None, &[], serde_json::json!({"mode": "nope"})), &registry()).unwrap_err();
    assert!(err.to_string().contains("mode: \"nope\": must be iptables, ipvs, nftables or blank"), "{err}");
}

#[test]
fn missing_and_malformed_files() {
    let err = load(&layers(Some("/nonexistent/x.yaml".into()), &[], Value::Null), &registry()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x.yaml"), "{err}");
    let (_d, path) = file("mode: [unclosed\n");
    let err = load(&layers(Some(path.clone()), &[], Value::Null), &registry()).unwrap_err();
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[test]
fn wrong_kind() {
    let (_d, path) = file("apiVersion: v1\nkind: ConfigMap\n");
    let err = load(&layers(Some(path), &[], Value::Null), &registry()).unwrap_err();
    assert_eq!(err.problems[0].path, "kind");
}

#[test]
fn sources() {
    assert_eq!(SourceSpec::parse("kube").unwrap(), SourceSpec::Kube);
    assert_eq!(SourceSpec::parse("file:/x").unwrap(), SourceSpec::File("/x".into()));
    assert!(SourceSpec::parse("file:").is_err());
    assert!(SourceSpec::parse("http://x").is_err());
}

#[test]
fn durations_longer_than_go_holds_are_errors_not_panics() {
    let err = load_yaml_str("syncPeriod: 99999999999999999999999h\n", &registry()).unwrap_err();
    assert_eq!(err.problems[0].path, "syncPeriod");
}

#[test]
fn min_sync_longer_than_sync_is_rejected() {
    let err = load(&layers(None, &[], serde_json::json!({"syncPeriod": "1s", "minSyncPeriod": "2s"})), &registry())
        .unwrap_err();
    assert_eq!(err.problems[0].path, "syncPeriod");
    assert!(err.problems[0].message.contains("must be greater than or equal to minSyncPeriod"), "{err}");
}

#[test]
fn cidr_families() {
    let c = load_yaml_str("clusterCIDR: 10.0.0.0/8,fd00::/48\n", &registry()).unwrap();
    let fams: Vec<IpFamily> = c.cluster_cidrs.iter().map(family).collect();
    assert_eq!(fams, [IpFamily::V4, IpFamily::V6]);
}

const KUBEADM_CONFIG: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: true
  masqueradeBit: 14
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;
