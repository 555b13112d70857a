//! The conformance suite with this crate's dataplane registered: the same
//! lab, scenarios, report and flags as `switchyard-conformance`.
//!
//! ```text
//! sudo custom-conformance --backend audited-iptables                 # the whole suite
//! sudo custom-conformance --backend audited-iptables --backend iptables   # side by side
//! ```

fn main() -> std::process::ExitCode {
    let mut registry = conformance::default_registry();
    if let Err(e) = registry.register(custom_dataplane::factory()) {
        #[allow(clippy::print_stderr, reason = "the process edge")]
        {
            eprintln!("custom-conformance: {e}");
        }
        return std::process::ExitCode::from(conformance::cli::EXIT_USAGE);
    }
    conformance::cli::main_with_registry(registry)
}
