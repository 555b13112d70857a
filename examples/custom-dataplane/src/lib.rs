//! An in-process third-party dataplane, as a crate outside switchyard would
//! write it: a [`BackendFactory`] (mode name, configuration section,
//! probe, build, cleanup) and the [`Dataplane`] it builds (capabilities,
//! sync, inspect, cleanup).
//!
//! The `audited-iptables` mode shows every seam on a dataplane that routes
//! for real: it delegates the kernel work to the built-in iptables backend
//! and adds what a third party might — an audit log line per Service
//! change, its own metric, its own validated section:
//!
//! ```yaml
//! audited-iptables:
//!   logEndpoints: true   # also log each Service's endpoint count
//! ```
//!
//! Replace the delegate with your own renderer and keep the rest. Two
//! binaries use the factory: `custom-switchyard` (the daemon) and
//! `custom-conformance` (the suite). Run the suite on it (as root):
//!
//! ```text
//! cargo run -p custom-dataplane --bin custom-conformance -- --backend audited-iptables
//! ```

#![warn(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use proxy_core::{
    BackendContext, BackendFactory, Capabilities, Dataplane, DataplaneError, DataplaneHealth, ProgrammedState,
    SyncOutcome, SyncRequest,
};
use tracing::info;

/// The `--proxy-mode` name.
pub const MODE: &str = "audited-iptables";

/// The factory a custom build registers.
pub fn factory() -> Arc<dyn BackendFactory> {
    Arc::new(AuditedFactory { inner: backend_iptables::factory() })
}

/// Validates and builds [`AuditedDataplane`]s.
pub struct AuditedFactory {
    inner: Arc<dyn BackendFactory>,
}

impl std::fmt::Debug for AuditedFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditedFactory").field("inner", &self.inner.mode()).finish()
    }
}

impl AuditedFactory {
    /// The delegate's context: its own (default) section.
    fn inner_ctx(ctx: &BackendContext) -> BackendContext {
        BackendContext { section: serde_json::Value::Null, ..ctx.clone() }
    }
}

#[async_trait]
impl BackendFactory for AuditedFactory {
    fn mode(&self) -> &str {
        MODE
    }

    fn description(&self) -> &str {
        "iptables with an audit log of every Service change (an example third-party dataplane)"
    }

    /// Problems in `audited-iptables:`, each naming its field.
    fn validate(&self, section: &serde_json::Value) -> Vec<String> {
        let Some(map) = section.as_object() else { return Vec::new() };
        map.iter()
            .filter_map(|(key, value)| match key.as_str() {
                "logEndpoints" if value.is_boolean() => None,
                "logEndpoints" => Some(format!("logEndpoints: expected true or false, found {value}")),
                other => Some(format!("{other}: unknown field")),
            })
            .collect()
    }

    async fn probe(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        self.inner.probe(&Self::inner_ctx(ctx)).await
    }

    async fn build(&self, ctx: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError> {
        let syncs = Counter::default();
        ctx.metrics.lock().unwrap_or_else(|e| e.into_inner()).register(
            "audited_syncs",
            "Syncs the audited-iptables example dataplane applied",
            syncs.clone(),
        );
        Ok(Arc::new(AuditedDataplane {
            inner: self.inner.build(&Self::inner_ctx(ctx)).await?,
            log_endpoints: ctx.section.get("logEndpoints").and_then(serde_json::Value::as_bool).unwrap_or(false),
            syncs,
        }))
    }

    async fn cleanup(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        self.inner.cleanup(&Self::inner_ctx(ctx)).await
    }
}

/// The dataplane: audits, then lets the delegate program the kernel.
#[derive(Debug)]
pub struct AuditedDataplane {
    inner: Arc<dyn Dataplane>,
    log_endpoints: bool,
    syncs: Counter,
}

#[async_trait]
impl Dataplane for AuditedDataplane {
    fn mode(&self) -> &str {
        MODE
    }

    /// What the conformance suite may test: a scenario needing anything
    /// else is reported unsupported, never passed.
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn sync(&self, request: SyncRequest) -> Result<SyncOutcome, DataplaneError> {
        // The plans are the core's decisions: which endpoints each frontend
        // reaches, reject or drop, masquerade, affinity. Render, never re-decide.
        for name in request.changed.iter() {
            match request.snapshot.service(name) {
                Some(plan) if self.log_endpoints => {
                    let endpoints: usize = plan.ports.iter().map(|p| p.internal().endpoints().len()).sum();
                    info!(service = %name, ports = plan.ports.len(), endpoints, "audit: Service changed");
                }
                Some(plan) => info!(service = %name, ports = plan.ports.len(), "audit: Service changed"),
                None => info!(service = %name, "audit: Service removed"),
            }
        }
        let mut outcome = self.inner.sync(request).await?;
        self.syncs.inc();
        outcome.objects.extend(BTreeMap::from([("audited syncs".to_string(), self.syncs.get())]));
        Ok(outcome)
    }

    async fn inspect(&self) -> Result<ProgrammedState, DataplaneError> {
        self.inner.inspect().await
    }

    async fn cleanup(&self) -> Result<(), DataplaneError> {
        self.inner.cleanup().await
    }

    fn health(&self) -> DataplaneHealth {
        self.inner.health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_custom_registries_have_the_new_mode() {
        let mut daemon = proxy_daemon::default_registry();
        daemon.register(factory()).expect("a new mode name");
        assert!(daemon.modes().contains(&MODE.to_string()));
        let mut suite = conformance::default_registry();
        suite.register(factory()).expect("a new mode name");
        assert!(suite.get(MODE).is_ok());
    }

    #[test]
    fn the_section_is_validated() {
        let f = factory();
        assert!(f.validate(&serde_json::json!({"logEndpoints": true})).is_empty());
        let p = f.validate(&serde_json::json!({"logEndpoints": 1, "colour": "red"}));
        assert_eq!(p.len(), 2, "{p:?}");
    }
}
