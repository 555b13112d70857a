//! The conformance runner with the eBPF backend registered, until the
//! conformance crate's default registry carries it:
//!
//! ```text
//! cargo run -p backend-ebpf --example ebpf-conformance -- --backend ebpf \
//!     --section 'ebpf={"cgroupPath":"{cgroup}","pinPath":"/run/swy-bpffs/switchyard"}'
//! ```
fn main() -> std::process::ExitCode {
    let mut registry = conformance::default_registry();
    if registry.register(backend_ebpf::factory()).is_err() {
        return std::process::ExitCode::from(2);
    }
    conformance::cli::main_with_registry(registry)
}
