//! switchyard's conformance suite: the proof that every dataplane routes
//! identically, with real packets in Linux network namespaces.
//!
//! - [`lab`] builds a small cluster out of network namespaces per run (see
//!   [`addresses`] for the plan) and runs an [`agent`] on every host: an
//!   echo server that tells who answered and which source it saw, and a
//!   prober.
//! - [`scenario`] reads scenarios as data (Kubernetes YAML plus steps);
//!   [`expect`] judges observations; [`oracle`] cross-checks every
//!   expectation against proxy-core's `ServicePortPlan::flow()`.
//! - [`runner`] plays scenarios against backends through a [`driver`]
//!   (in-process through a [`proxy_core::Registry`], or an external
//!   `switchyard` binary) and produces a [`report`].
//! - [`apiserver`] runs upstream etcd and kube-apiserver (built by
//!   `./x reference`) as a real control plane for tests; [`apisource`]
//!   makes it the scenarios' object source (`--source apiserver`), reached
//!   from node1 through a [`relay`].
//! - [`cli`] is the `switchyard-conformance` binary; a plugin author's own
//!   binary is `cli::main_with_registry(my_registry)`.

pub mod addresses;
pub mod agent;
pub mod apiserver;
pub mod apisource;
pub mod cli;
pub mod driver;
pub mod error;
pub mod expect;
pub mod kubeproxy;
pub mod lab;
pub mod oracle;
pub mod patience;
pub mod relay;
pub mod report;
pub mod runner;
pub mod sandbox;
pub mod scenario;

pub use error::{ConformanceError, Result};
pub use lab::{Lab, LabConfig, LabInfo};
pub use report::{Report, Status};
pub use runner::{SuiteConfig, run_suite};
pub use scenario::Scenario;

use proxy_core::Registry;

/// The backends built into switchyard, registered the way a plugin's are.
/// The suite's binary runs `--backend NAME` for any mode registered here.
pub fn default_registry() -> Registry {
    let mut registry = Registry::new();
    for factory in [
        backend_iptables::factory(),
        backend_ipvs::factory(),
        backend_ebpf::factory(),
        backend_nftables::factory(),
        backend_plugin::factory(),
    ] {
        // Built-in mode names are distinct; a duplicate would be a programming error caught by tests.
        if let Err(e) = registry.register(factory) {
            tracing::error!(error = %e, "built-in backend not registered");
        }
    }
    registry
}

/// Where the scenario files shipped with this crate are (for development
/// builds; installed binaries get `--scenarios` or `SWITCHYARD_CONFORMANCE_SCENARIOS`).
pub fn builtin_scenarios_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_registry_has_the_builtin_backends() {
        assert_eq!(super::default_registry().modes(), ["ebpf", "iptables", "ipvs", "nftables", "plugin"]);
    }
}
