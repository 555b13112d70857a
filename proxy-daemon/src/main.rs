//! `switchyard`: the daemon with the built-in backends.

fn main() -> std::process::ExitCode {
    proxy_daemon::main_with(proxy_daemon::default_registry())
}
