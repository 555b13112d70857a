//! The runner end to end in a real lab (root only), against a small fixture
//! dataplane: a correct one passes, deliberately broken ones fail with
//! evidence. Proves the suite can tell right from wrong.

#![allow(clippy::print_stderr, reason = "tests say on stderr why they skip, and print the report")]

mod fixture;

use std::collections::BTreeMap;
use std::sync::Arc;

use conformance::driver::{DriverFactory, InProcess};
use conformance::report::Status;
use conformance::{Lab, LabConfig, Scenario, SuiteConfig};

fn scenarios(names: &[&str]) -> Vec<Scenario> {
    let all = Scenario::load_dir(&conformance::builtin_scenarios_dir()).expect("scenarios");
    all.into_iter().filter(|s| names.is_empty() || names.contains(&s.name.as_str())).collect()
}

async fn run(names: &[&str], backends: Vec<Arc<dyn DriverFactory>>) -> conformance::Report {
    let scenarios = scenarios(names);
    let ports = conformance::runner::echo_ports(&scenarios);
    let lab = Lab::create(LabConfig { agent_exe: env!("CARGO_BIN_EXE_switchyard-conformance").into(), ports })
        .await
        .expect("lab");
    let config = SuiteConfig { backends, sections: BTreeMap::new(), strict_inspect: true };
    let report = conformance::run_suite(&lab, &scenarios, &config).await;
    lab.teardown().await;
    eprintln!("{}", report.table());
    report
}

fn backend(mode: &'static str, faults: fixture::Faults) -> Arc<dyn DriverFactory> {
    Arc::new(InProcess { factory: fixture::factory(mode, faults) })
}

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread")]
async fn a_correct_backend_passes_and_a_broken_one_fails_with_evidence() {
    let names = [
        "clusterip-single-port",
        "clusterip-from-every-client",
        "no-endpoints-reject",
        "etp-local-from-every-client",
        "hairpin-clusterip",
        "tcp-udp-sctp-same-port",
        "loadbalancer-source-ranges-allow",
        "udp-endpoint-replacement",
    ];
    let report = run(
        &names,
        vec![
            backend("naive", fixture::Faults::default()),
            backend("no-masq", fixture::Faults { never_masquerade: true, ..Default::default() }),
            backend("drops", fixture::Faults { drop_instead_of_reject: true, ..Default::default() }),
            backend("stale-udp", fixture::Faults { keep_udp_conntrack: true, ..Default::default() }),
        ],
    )
    .await;
    let status =
        |s: &str, b: &str| report.results.iter().find(|r| r.scenario == s && r.backend == b).map(|r| r.status.clone());
    for s in [
        "clusterip-single-port",
        "clusterip-from-every-client",
        "no-endpoints-reject",
        "etp-local-from-every-client",
        "hairpin-clusterip",
    ] {
        assert_eq!(status(s, "naive"), Some(Status::Pass), "{s}");
    }
    assert!(matches!(status("tcp-udp-sctp-same-port", "naive"), Some(Status::Unsupported { .. })));
    assert!(
        matches!(status("loadbalancer-source-ranges-allow", "naive"), Some(Status::Unsupported { reason }) if reason.contains("SourceRanges"))
    );
    assert!(
        matches!(status("clusterip-from-every-client", "no-masq"), Some(Status::Fail { reason }) if reason.contains("saw source"))
    );
    assert!(matches!(status("hairpin-clusterip", "no-masq"), Some(Status::Fail { .. })));
    assert!(
        matches!(status("no-endpoints-reject", "drops"), Some(Status::Fail { reason }) if reason.contains("refused"))
    );
    assert!(
        matches!(status("udp-endpoint-replacement", "stale-udp"), Some(Status::Fail { reason }) if reason.contains("a1"))
    );
    assert!(report.failed());
    assert!(!report.differences.is_empty(), "backends that behave differently are flagged");
}

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread")]
async fn the_fixture_passes_every_scenario_it_supports() {
    if std::env::var_os("SWITCHYARD_CONFORMANCE_FULL").is_none() {
        eprintln!("SKIPPED: set SWITCHYARD_CONFORMANCE_FULL=1 to run every scenario against the fixture");
        return;
    }
    let report = run(&[], vec![backend("naive", fixture::Faults::default())]).await;
    assert!(!report.failed(), "{}", report.table());
}
