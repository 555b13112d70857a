//! switchyard's out-of-process dataplanes: `--proxy-mode plugin`.
//!
//! A plugin is a program in any language that speaks [protocol v1](protocol)
//! — newline-delimited JSON — over its stdin/stdout (the daemon starts it,
//! `plugin: {command: [...]}`) or over a Unix socket (a sidecar, `plugin:
//! {socket: PATH}`). The daemon sends the core's plans, the plugin programs
//! the kernel and answers each batch's barrier; `inspect` reads the kernel
//! back; `cleanup` removes everything.
//!
//! - [`protocol`]: the messages, as Rust types (also usable by a plugin written in Rust).
//! - [`schema`]: the JSON Schema (`schema/plugin-protocol-v1.schema.json`) and
//!   the validator the daemon runs on everything a plugin sends.
//! - [`client`]: framing, request ids, starting the process or connecting.
//! - [`dataplane`]: the [`PluginDataplane`] and its supervisor (restarts
//!   with backoff, full state after every (re)connect, health and metrics).
//! - [`config`]: the `plugin:` section.
//! - [`samples`]: one message of every kind with every field, for tests
//!   (yours too: `schema/examples-v1.jsonl`).
//!
//! `docs/plugins.md` is the guide for plugin authors.

#![warn(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;

use async_trait::async_trait;
use proxy_core::{BackendContext, BackendFactory, Dataplane, DataplaneError};
use tracing::{info, warn};

pub mod client;
pub mod config;
pub mod dataplane;
pub mod error;
pub mod protocol;
pub mod samples;
pub mod schema;

pub use config::{PluginConfig, Transport};
pub use dataplane::{PluginDataplane, PluginMetrics};
pub use error::Error;

/// The `--proxy-mode` name.
pub const MODE: &str = "plugin";

/// Builds [`PluginDataplane`]s for the registry.
#[derive(Debug, Default)]
pub struct PluginFactory;

/// The factory for the `plugin` proxy mode.
pub fn factory() -> Arc<dyn BackendFactory> {
    Arc::new(PluginFactory)
}

fn configured(section: &serde_json::Value) -> Result<PluginConfig, DataplaneError> {
    match PluginConfig::parse(section) {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(DataplaneError::unavailable(MODE, "no plugin configured: set plugin.command or plugin.socket")),
        Err(problems) => Err(DataplaneError::Config { mode: MODE.into(), problems }),
    }
}

/// Whether `program` names an executable file (a path, or a name on `PATH`).
fn executable(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return is_exec(std::path::Path::new(program));
    }
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| is_exec(&d.join(program))))
}

#[async_trait]
impl BackendFactory for PluginFactory {
    fn mode(&self) -> &str {
        MODE
    }

    fn description(&self) -> &str {
        "an out-of-process dataplane plugin (protocol v1: newline-delimited JSON over stdin/stdout or a Unix socket)"
    }

    fn validate(&self, section: &serde_json::Value) -> Vec<String> {
        PluginConfig::parse(section).err().unwrap_or_default()
    }

    async fn probe(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        match configured(&ctx.section)?.transport {
            Transport::Command(argv) => match argv.first() {
                Some(program) if executable(program) => Ok(()),
                Some(program) => {
                    Err(DataplaneError::unavailable(MODE, format!("plugin executable {program:?} not found")))
                }
                None => Err(DataplaneError::unavailable(MODE, "plugin.command is empty")),
            },
            // A sidecar may start after the daemon: build waits for its socket.
            Transport::Socket(_) => Ok(()),
        }
    }

    async fn build(&self, ctx: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError> {
        let config = configured(&ctx.section)?;
        let metrics = PluginMetrics::new();
        metrics.register(&mut ctx.metrics.lock().unwrap_or_else(|e| e.into_inner()));
        let dp = PluginDataplane::start(config, ctx, metrics).await.map_err(|e| e.into_dataplane("start"))?;
        Ok(Arc::new(dp))
    }

    async fn cleanup(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        let config = match PluginConfig::parse(&ctx.section) {
            Ok(Some(c)) => c,
            // Nothing configured: nothing this daemon could ever have installed through a plugin.
            Ok(None) => return Ok(()),
            Err(problems) => return Err(DataplaneError::Config { mode: MODE.into(), problems }),
        };
        match dataplane::cleanup_once(config, ctx).await {
            Ok(()) => {
                info!("plugin cleaned up");
                Ok(())
            }
            Err(e @ (Error::Spawn { .. } | Error::Connect { .. })) => {
                warn!(error = %proxy_core::ErrorChain(&e), "plugin unreachable; nothing cleaned up");
                Ok(())
            }
            Err(e) => Err(e.into_dataplane("cleanup")),
        }
    }
}
