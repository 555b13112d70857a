//! switchyard's iptables dataplane: kube-proxy's iptables mode, with a
//! dispatch tree instead of one rule per Service.
//!
//! - [`render`] turns plans into chains ([`tree`] builds the dispatch trees),
//!   [`sync`] turns chains into `iptables-restore --noflush` payloads (full or
//!   partial), [`exec`] runs them in the backend's network namespace.
//! - [`restore`] is the public rule writer (tables, chains, rules, escaped
//!   comments) and [`parse`] reads `iptables-save` back; the IPVS backend
//!   uses both for its helper rules.
//! - [`trace`] evaluates rules for a packet; [`inspect`] uses it to read the
//!   kernel back into a `ProgrammedState`, and the tests to check every flow
//!   against `ServicePortPlan::flow`.
//! - stale UDP conntrack entries are deleted by `proxy_core::conntrack`
//!   (shared with nftables and ipvs); [`cleanup`] removes everything we own; [`supported`] probes the node; [`fake`] is an
//!   in-memory iptables for tests.
//!
//! See the README for the chain layout, the integration contract and figures.

use std::sync::Arc;

use async_trait::async_trait;
use proxy_core::{BackendContext, BackendFactory, Dataplane, DataplaneError, IpFamily};

pub mod cleanup;
pub mod config;
pub mod dataplane;
pub mod drift;
pub mod error;
pub mod exec;
pub mod fake;
pub mod generation;
pub mod inspect;
pub mod metrics;
pub mod names;
pub mod parse;
pub mod render;
pub mod restore;
pub mod supported;
pub mod sync;
pub mod sysctl;
pub mod trace;
pub mod tree;
pub mod trees;

pub use config::IptablesConfig;
pub use dataplane::{IptablesDataplane, MODE, Settings};
pub use error::Error;
pub use exec::{Executor, SystemExecutor, Variant};
pub use restore::{RestorePayload, Rule, Table, TableSection};

/// Builds [`IptablesDataplane`]s for the registry.
#[derive(Debug, Default)]
pub struct IptablesFactory;

/// The factory for the `iptables` proxy mode.
pub fn factory() -> Arc<dyn BackendFactory> {
    Arc::new(IptablesFactory)
}

#[async_trait]
impl BackendFactory for IptablesFactory {
    fn mode(&self) -> &str {
        MODE
    }

    fn description(&self) -> &str {
        "iptables rules (nat and filter tables), programmed with iptables-restore; nft or legacy backend"
    }

    fn validate(&self, section: &serde_json::Value) -> Vec<String> {
        IptablesConfig::from_section(section).err().unwrap_or_default()
    }

    async fn probe(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        let ctx = ctx.clone();
        proxy_core::blocking::once(&ctx.netns.clone(), move || {
            let dp = IptablesDataplane::from_context(&ctx)?;
            let families: Vec<IpFamily> = ctx.families.iter().collect();
            let variant = dp.variant();
            supported::probe(&ctx.netns, variant, &families)
                .map_err(|e| DataplaneError::unavailable(MODE, proxy_core::ErrorChain(&e).to_string()))
        })
        .await
        .map_err(|e| DataplaneError::failed(MODE, "probe", e))?
    }

    /// `route_localnet`, when localhost node ports are served (as kube-proxy's
    /// `--init-only` in this mode).
    async fn init_only(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || IptablesDataplane::from_context(&ctx)?.init_sysctls())
            .await
            .map_err(|e| DataplaneError::failed(MODE, "init", e))?
    }

    async fn build(&self, ctx: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError> {
        let ctx = ctx.clone();
        let dp = proxy_core::blocking::once(&ctx.netns.clone(), move || IptablesDataplane::from_context(&ctx))
            .await
            .map_err(|e| DataplaneError::failed(MODE, "build", e))??;
        Ok(Arc::new(dp))
    }
}
