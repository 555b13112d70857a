//! A custom `switchyard`: the default registry plus one more dataplane.
//! Same flags, configuration, sources, health, metrics and `inspect` as
//! the stock binary:
//!
//! ```text
//! custom-switchyard --proxy-mode audited-iptables --source file:manifests/ --hostname-override node-a
//! ```

fn main() -> std::process::ExitCode {
    let mut registry = proxy_daemon::default_registry();
    if let Err(e) = registry.register(custom_dataplane::factory()) {
        #[allow(clippy::print_stderr, reason = "the process edge")]
        {
            eprintln!("custom-switchyard: {e}");
        }
        return std::process::ExitCode::from(proxy_daemon::exit_code::STARTUP);
    }
    proxy_daemon::main_with(registry)
}
