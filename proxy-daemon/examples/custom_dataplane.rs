//! A custom switchyard build with a third-party dataplane.
//!
//! A dataplane is a `BackendFactory` (how to validate its configuration
//! section, probe the node, build and clean up) plus the `Dataplane` it
//! builds (sync, inspect, cleanup). A custom build registers the factory in
//! the default registry and calls the same entry point as `switchyard`, so
//! it gets the same flags, configuration file, sources, health, metrics and
//! `inspect`:
//!
//! ```text
//! cargo run -p proxy-daemon --example custom_dataplane -- \
//!     --proxy-mode memory --source file:examples/manifests --hostname-override node-a
//! ```
//!
//! The "memory" dataplane here programs nothing: it keeps the last synced
//! state in memory and logs a line per sync. Its configuration section shows
//! how `validate` and `probe` are used:
//!
//! ```yaml
//! memory:
//!   available: true    # false: probe says the mode is unavailable (exit 3)
//!   failSyncs: 0       # fail the first N syncs (retry behaviour)
//! ```
//!
//! The daemon's own tests run this binary as a black box.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use proxy_core::{
    BackendContext, BackendFactory, Capabilities, Dataplane, DataplaneError, ProgrammedState, SyncOutcome, SyncRequest,
};

/// The factory: registered under its mode name.
#[derive(Debug)]
struct MemoryFactory;

#[async_trait]
impl BackendFactory for MemoryFactory {
    fn mode(&self) -> &str {
        "memory"
    }

    fn description(&self) -> &str {
        "keeps the desired state in memory and programs nothing (an example plugin)"
    }

    fn validate(&self, section: &serde_json::Value) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(map) = section.as_object() else { return problems };
        for (key, value) in map {
            match key.as_str() {
                "available" if !value.is_boolean() => problems.push("available: expected true or false".into()),
                "failSyncs" if !value.is_u64() => problems.push("failSyncs: expected a count".into()),
                "available" | "failSyncs" => {}
                other => problems.push(format!("{other}: unknown field")),
            }
        }
        problems
    }

    async fn probe(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        if ctx.section.get("available").and_then(serde_json::Value::as_bool) == Some(false) {
            return Err(DataplaneError::unavailable("memory", "memory.available is false"));
        }
        Ok(())
    }

    async fn build(&self, ctx: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError> {
        let fail = ctx.section.get("failSyncs").and_then(serde_json::Value::as_u64).unwrap_or(0);
        Ok(Arc::new(MemoryDataplane { programmed: Mutex::new(None), fail_syncs: AtomicU64::new(fail) }))
    }

    async fn cleanup(&self, _ctx: &BackendContext) -> Result<(), DataplaneError> {
        tracing::info!("memory: nothing to clean up");
        Ok(())
    }
}

/// The dataplane: `sync` makes the "kernel" (here, memory) match the plans.
#[derive(Debug)]
struct MemoryDataplane {
    programmed: Mutex<Option<ProgrammedState>>,
    fail_syncs: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("injected failure (memory.failSyncs)")]
struct Injected;

#[async_trait]
impl Dataplane for MemoryDataplane {
    fn mode(&self) -> &str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn sync(&self, request: SyncRequest) -> Result<SyncOutcome, DataplaneError> {
        if self.fail_syncs.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(DataplaneError::failed("memory", "sync", Injected));
        }
        // A real backend renders request.snapshot's plans into the kernel
        // here; the planner already decided every Service semantic.
        let state = request.snapshot.expected_state();
        let frontends = state.frontends.len() as u64;
        *self.programmed.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
        Ok(SyncOutcome {
            full: true,
            objects: BTreeMap::from([("frontends".to_string(), frontends)]),
            ..Default::default()
        })
    }

    async fn inspect(&self) -> Result<ProgrammedState, DataplaneError> {
        Ok(self.programmed.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default())
    }

    async fn cleanup(&self) -> Result<(), DataplaneError> {
        *self.programmed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    let mut registry = proxy_daemon::default_registry();
    if let Err(e) = registry.register(Arc::new(MemoryFactory)) {
        #[allow(clippy::print_stderr, reason = "the process edge")]
        {
            eprintln!("{e}");
        }
        return std::process::ExitCode::from(proxy_daemon::exit_code::STARTUP);
    }
    proxy_daemon::main_with(registry)
}
