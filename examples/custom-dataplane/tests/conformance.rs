//! The in-process example through the conformance library, as a plugin
//! author would test theirs (root only): a handful of scenarios, because
//! the dataplane delegates to iptables, which runs the whole suite in
//! `conformance/tests/iptables.rs`. `custom-conformance --backend
//! audited-iptables` runs all of them.

#![allow(clippy::print_stderr, reason = "tests say on stderr why they skip, and print the report")]

use std::collections::BTreeMap;
use std::sync::Arc;

use conformance::driver::{DriverFactory, InProcess};
use conformance::{Lab, LabConfig, Scenario, Status, SuiteConfig};

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread")]
async fn the_custom_dataplane_passes_the_suite() {
    let mut registry = conformance::default_registry();
    registry.register(custom_dataplane::factory()).expect("a new mode");
    let factory = registry.get(custom_dataplane::MODE).expect("registered").clone();
    let wanted =
        ["clusterip-single-port", "nodeport-every-node-address", "etp-local-from-every-client", "no-endpoints-reject"];
    let scenarios: Vec<Scenario> = Scenario::load_dir(&conformance::builtin_scenarios_dir())
        .expect("scenarios")
        .into_iter()
        .filter(|s| wanted.contains(&s.name.as_str()))
        .collect();
    assert_eq!(scenarios.len(), wanted.len());
    let ports = conformance::runner::echo_ports(&scenarios);
    let lab = Lab::create(LabConfig { agent_exe: env!("CARGO_BIN_EXE_custom-conformance").into(), ports })
        .await
        .expect("lab");
    let backends: Vec<Arc<dyn DriverFactory>> = vec![Arc::new(InProcess { factory })];
    let sections = BTreeMap::from([(custom_dataplane::MODE.to_string(), serde_json::json!({"logEndpoints": true}))]);
    let report =
        conformance::run_suite(&lab, &scenarios, &SuiteConfig { backends, sections, strict_inspect: true }).await;
    lab.teardown().await;
    eprintln!("{}", report.table());
    assert!(report.results.iter().all(|r| r.status == Status::Pass), "failures (evidence above)");
}
