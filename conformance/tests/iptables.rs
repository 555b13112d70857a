//! The full scenario set against the built-in iptables backend, as CI runs
//! it (root only). The report's evidence is printed on failure.

#![allow(clippy::print_stderr, reason = "tests say on stderr why they skip, and print the report")]

use std::collections::BTreeMap;
use std::sync::Arc;

use conformance::driver::{DriverFactory, InProcess};
use conformance::{Lab, LabConfig, Scenario, SuiteConfig};

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread")]
async fn every_scenario_passes_or_is_unsupported_on_iptables() {
    let registry = conformance::default_registry();
    let factory = registry.get("iptables").expect("iptables is built in").clone();
    let scenarios = Scenario::load_dir(&conformance::builtin_scenarios_dir()).expect("scenarios");
    let ports = conformance::runner::echo_ports(&scenarios);
    let lab = Lab::create(LabConfig { agent_exe: env!("CARGO_BIN_EXE_switchyard-conformance").into(), ports })
        .await
        .expect("lab");
    let backends: Vec<Arc<dyn DriverFactory>> = vec![Arc::new(InProcess { factory })];
    let config = SuiteConfig { backends, sections: BTreeMap::new(), strict_inspect: true };
    let report = conformance::run_suite(&lab, &scenarios, &config).await;
    lab.teardown().await;
    eprintln!("{}", report.table());
    assert!(!report.failed(), "conformance failures on iptables (evidence above)");
    // Only SCTP may be unsupported on a host without it.
    for r in &report.results {
        if let conformance::Status::Unsupported { reason } = &r.status {
            assert!(reason.contains("SCTP"), "{} unsupported: {reason}", r.scenario);
        }
    }
}
