//! The full scenario set against the example out-of-process plugin
//! (`examples/plugins/nft-example/plugin.py`, nftables from Python) through
//! the `plugin` mode, as CI runs it (root only). It must pass every
//! scenario its declared capabilities cover; the rest are unsupported.

#![allow(clippy::print_stderr, reason = "tests say on stderr why they skip, and print the report")]

use std::collections::BTreeMap;
use std::sync::Arc;

use conformance::driver::{DriverFactory, InProcess};
use conformance::{Lab, LabConfig, Scenario, Status, SuiteConfig};

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread")]
async fn the_example_plugin_passes_its_subset() {
    if std::process::Command::new("nft").arg("--version").output().is_err() {
        eprintln!("SKIPPED: nft is not installed");
        return;
    }
    // The VM of `cargo xtask vm test` carries no Python; the host tiers run this.
    if std::process::Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: python3 is not installed (the example plugin is Python)");
        return;
    }
    let plugin = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/plugins/nft-example/plugin.py");
    let registry = conformance::default_registry();
    let factory = registry.get("plugin").expect("the plugin mode is built in").clone();
    let scenarios = Scenario::load_dir(&conformance::builtin_scenarios_dir()).expect("scenarios");
    let ports = conformance::runner::echo_ports(&scenarios);
    let lab = Lab::create(LabConfig { agent_exe: env!("CARGO_BIN_EXE_switchyard-conformance").into(), ports })
        .await
        .expect("lab");
    let backends: Vec<Arc<dyn DriverFactory>> = vec![Arc::new(InProcess { factory })];
    let sections = BTreeMap::from([("plugin".to_string(), serde_json::json!({"command": ["python3", plugin]}))]);
    let config = SuiteConfig { backends, sections, strict_inspect: true };
    let report = conformance::run_suite(&lab, &scenarios, &config).await;
    lab.teardown().await;
    eprintln!("{}", report.table());
    assert!(!report.failed(), "conformance failures on the example plugin (evidence above)");
    let passed = |name: &str| report.results.iter().any(|r| r.scenario == name && r.status == Status::Pass);
    for must in [
        "clusterip-single-port",
        "clusterip-udp",
        "nodeport-every-node-address",
        "no-endpoints-reject",
        "backend-restart",
    ] {
        assert!(passed(must), "{must} did not pass");
    }
    // Unsupported only for what the plugin declares it lacks, or the kernel lacks.
    for r in &report.results {
        if let Status::Unsupported { reason } = &r.status {
            assert!(reason.contains("lacks capabilities") || reason.contains("kernel"), "{}: {reason}", r.scenario);
        }
    }
}
