//! switchyard's nftables dataplane: kube-proxy's nftables mode, talking
//! to nf_tables over netlink, with every Service in set and map elements.
//!
//! - [`decide`] holds every plan-to-kernel decision; [`render`] turns them
//!   into the fixed rules and the per-Service elements;
//!   [`dataplane`] syncs them (full: one transaction rewriting the table;
//!   partial: only the changed elements, one transaction);
//! - [`netlink`] builds and reads nf_tables messages; [`client`] is the
//!   kernel interface (and its real implementation); [`inspect`] reads the
//!   table back; [`cleanup`] deletes it; [`supported`] probes the node.
//!
//! See the README for the layout, the integration contract and figures.

use std::sync::Arc;

use async_trait::async_trait;
use proxy_core::{BackendContext, BackendFactory, Dataplane, DataplaneError};

pub mod cleanup;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod decide;
pub mod error;
pub mod inspect;
pub mod monitor;
pub mod netlink;
pub mod render;
pub mod supported;

pub use config::NftablesConfig;
pub use dataplane::{MODE, NftablesDataplane, Settings};
pub use error::Error;

/// Builds [`NftablesDataplane`]s for the registry.
#[derive(Debug, Default)]
pub struct NftablesFactory;

/// The factory for the `nftables` proxy mode.
pub fn factory() -> Arc<dyn BackendFactory> {
    Arc::new(NftablesFactory)
}

#[async_trait]
impl BackendFactory for NftablesFactory {
    fn mode(&self) -> &str {
        MODE
    }

    fn description(&self) -> &str {
        "nf_tables over netlink: one table per family, Services in sets and verdict maps"
    }

    fn validate(&self, section: &serde_json::Value) -> Vec<String> {
        NftablesConfig::from_section(section).err().unwrap_or_default()
    }

    async fn probe(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        let netns = ctx.netns.clone();
        tokio::task::spawn_blocking(move || supported::probe(&netns))
            .await
            .map_err(|e| DataplaneError::failed(MODE, "probe", e))?
            .map_err(|e| DataplaneError::unavailable(MODE, proxy_core::ErrorChain(&e).to_string()))
    }

    async fn build(&self, ctx: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError> {
        Ok(Arc::new(NftablesDataplane::from_context(ctx)?))
    }
}
