//! `switchyard-conformance`: the conformance suite with switchyard's built-in backends.

fn main() -> std::process::ExitCode {
    conformance::cli::main_with_registry(conformance::default_registry())
}
