//! The switchyard daemon, as a library.
//!
//! The `switchyard` binary is [`main_with`] called with [`default_registry`].
//! A custom build with a third-party dataplane is the same call with one
//! more factory registered — same flags, configuration, sources, health,
//! metrics and `inspect`:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn my_factory() -> Arc<dyn proxy_core::BackendFactory> { unimplemented!() }
//! fn main() -> std::process::ExitCode {
//!     let mut registry = proxy_daemon::default_registry();
//!     registry.register(my_factory()).expect("mode names are unique");
//!     proxy_daemon::main_with(registry)
//! }
//! ```
//!
//! Exit codes ([`exit_code`]): 0 clean stop (SIGTERM/SIGINT, `--cleanup`
//! done, `inspect` found no difference); 1 failure while running (or
//! `inspect` found differences); 2 usage or configuration error, reported
//! before any side effect; 3 start-up failure: the proxy mode is
//! unavailable on this node (probed before anything is touched), a port
//! cannot be bound with `bindAddressHardFail`, the backend cannot be built.

use std::process::ExitCode;

use clap::Parser;
use proxy_core::Registry;
use tracing::{error, info, warn};

pub mod admin;
pub mod cli;
pub mod compat;
pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod fake_apiserver;
pub mod healthcheck;
pub mod inspect;
pub mod kube_proxy_leftovers;
pub mod logging;
pub mod process_metrics;
pub mod source;
pub mod yaml;

pub use cli::Cli;
pub use config::Config;

/// The process exit codes.
pub mod exit_code {
    /// Clean stop.
    pub const CLEAN: u8 = 0;
    /// Failure while running; `inspect` found differences.
    pub const FAILURE: u8 = 1;
    /// Usage or configuration error (nothing was touched).
    pub const USAGE: u8 = 2;
    /// Start-up failure: mode unavailable, port taken, backend cannot be built.
    pub const STARTUP: u8 = 3;
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error("proxy mode {mode} is not available on this node: {reason}")]
    Unavailable { mode: String, reason: String },
    #[error("start-up failed: {0}")]
    Startup(String),
    #[error("{0}")]
    Runtime(String),
}

impl DaemonError {
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) => exit_code::USAGE,
            DaemonError::Unavailable { .. } | DaemonError::Startup(_) => exit_code::STARTUP,
            DaemonError::Runtime(_) => exit_code::FAILURE,
        }
    }
}

/// The version and the commit it was built from (`SWITCHYARD_GIT_COMMIT`
/// at build time, set by the image build).
pub fn build_info() -> (&'static str, &'static str) {
    (env!("CARGO_PKG_VERSION"), option_env!("SWITCHYARD_GIT_COMMIT").unwrap_or("unknown"))
}

/// The built-in backends, registered through the same public API a
/// third-party crate uses. Each backend's `factory()` is added here as it lands.
pub fn default_registry() -> Registry {
    let mut registry = Registry::new();
    for factory in [
        backend_iptables::factory(),
        backend_ipvs::factory(),
        backend_ebpf::factory(),
        backend_nftables::factory(),
        backend_plugin::factory(),
    ] {
        // Built-in mode names are distinct constants; a duplicate is a bug caught by the tests.
        if let Err(e) = registry.register(factory) {
            tracing::error!(error = %e, "built-in backend registered twice");
        }
    }
    registry
}

/// Parses the process's arguments and runs; what `main` returns.
pub fn main_with(registry: Registry) -> ExitCode {
    main_with_args(std::env::args_os(), registry)
}

/// [`main_with`] with explicit arguments (tests, wrappers).
#[allow(clippy::print_stderr, clippy::print_stdout, reason = "the process edge: usage errors and inspect output")]
pub fn main_with_args<I, T>(args: I, registry: Registry) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit_code::USAGE } else { exit_code::CLEAN });
        }
    };
    // kube-proxy's `--version[=raw]` prints and exits; `--version=vX.Y.Z`
    // (setting the reported version) is accepted with a warning below.
    let version_override = match cli.flags.version.as_deref() {
        Some("true" | "raw") => {
            let (version, commit) = build_info();
            println!("switchyard {version} (commit {commit})");
            return ExitCode::from(exit_code::CLEAN);
        }
        Some("false") | None => None,
        Some(other) => Some(other.to_string()),
    };
    // Configuration is parsed and validated before any side effect.
    let cfg = match config::load(&cli.flags.layers(), &registry) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::from(exit_code::USAGE);
        }
    };
    if let Some(path) = &cli.flags.write_config_to {
        // As kube-proxy: the effective configuration, validated, then exit.
        return match write_config(path, &cfg) {
            Ok(()) => ExitCode::from(exit_code::CLEAN),
            Err(e) => {
                eprintln!("switchyard: --write-config-to {}: {e}", path.display());
                ExitCode::from(exit_code::FAILURE)
            }
        };
    }
    let log = logging::init(cfg.log_format, cfg.verbosity);
    let (version, commit) = build_info();
    info!(
        version,
        commit,
        modes = ?registry.modes(),
        mode = %cfg.mode,
        config_file = ?cli.flags.config,
        flavour = ?cfg.flavour,
        "switchyard {version}"
    );
    // Each setting that has no effect here is named once.
    for w in &cfg.warnings {
        warn!(setting = %w.path, origin = w.origin.as_deref().unwrap_or("default"), "{}", w.message);
    }
    if let Some(v) = version_override {
        warn!(setting = "--version", value = %v, "has no effect: switchyard reports its own version");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(exit_code::STARTUP);
        }
    };
    let result = runtime.block_on(async {
        if cli.flags.cleanup() {
            return daemon::cleanup_all(&cfg, &registry).await.map(|()| exit_code::CLEAN);
        }
        if cli.flags.init_only() {
            return daemon::init_only(&cfg, &registry).await.map(|()| exit_code::CLEAN);
        }
        match &cli.command {
            Some(cli::Command::Inspect(args)) => {
                let report = inspect::inspect(args, &cfg, &registry).await?;
                print!("{}", inspect::render(&report, args.output));
                Ok(if report.matches() { exit_code::CLEAN } else { exit_code::FAILURE })
            }
            None => daemon::run(cfg.clone(), registry.clone(), log).await.map(|()| exit_code::CLEAN),
        }
    });
    // Background tasks (watch connections) must not hold the process up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            error!(error = %e, exit_code = e.exit_code(), "switchyard stopped");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Writes the effective configuration as kube-proxy's v1alpha1 YAML.
fn write_config(path: &std::path::Path, cfg: &Config) -> Result<(), String> {
    let text = serde_saphyr::to_string(&cfg.kube_proxy).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| e.to_string())
}
