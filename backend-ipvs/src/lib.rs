//! switchyard's IPVS dataplane (`--proxy-mode ipvs`).
//!
//! Like kube-proxy's ipvs mode: every ClusterIP, externalIP and load-balancer
//! IP is an address of the dummy interface `switchyard0` (so traffic to it is
//! local and meets IPVS at LOCAL_IN); every frontend and protocol is one IPVS
//! virtual server (NodePorts: one per selected node address) whose real
//! servers are the plan's endpoints; sessionAffinity ClientIP is IPVS
//! persistence with the Service's timeout. What IPVS cannot do (masquerade,
//! hairpin, source ranges, drop) is done by a few iptables rules over IP sets
//! ([`rules`]).
//!
//! IPVS is driven over generic netlink directly ([`message`], [`client`]);
//! `ipvsadm` is never run. Minimum kernel: 4.6 (`IPVS_DEST_ATTR_ADDR_FAMILY`);
//! tested on Debian's 6.1 in QEMU (`cargo xtask vm test`).
//!
//! Modules, named as in the other backends: [`config`], [`dataplane`] (the
//! `Dataplane` impl: one sync), [`reconcile`] (desired state and
//! operations), [`client`] (the IPVS generic netlink socket) and [`fake`]
//! (an in-memory IPVS behind the same trait), [`inspect`], [`cleanup`],
//! [`supported`] (probe), [`error`]; and IPVS's own: [`message`] (wire
//! format), [`link`] (switchyard0), [`rules`] (sets and helper iptables
//! rules), [`sysctl`], [`procfs`].

pub mod cleanup;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod error;
pub mod fake;
pub mod inspect;
pub mod link;
pub mod message;
pub mod procfs;
pub mod reconcile;
pub mod rules;
pub mod supported;
pub mod sysctl;

use std::sync::Arc;

use async_trait::async_trait;
use proxy_core::{BackendContext, BackendFactory, Dataplane, DataplaneError};

pub use crate::config::IpvsConfig;
pub use crate::dataplane::IpvsDataplane;
pub use crate::error::IpvsError;

/// The `--proxy-mode` name.
pub const MODE: &str = "ipvs";

/// The factory registered under `ipvs`.
#[derive(Debug, Default)]
pub struct IpvsFactory;

/// `Arc<dyn BackendFactory>` for the registry.
pub fn factory() -> Arc<dyn BackendFactory> {
    Arc::new(IpvsFactory)
}

#[async_trait]
impl BackendFactory for IpvsFactory {
    fn mode(&self) -> &str {
        MODE
    }

    fn description(&self) -> &str {
        "IPVS virtual servers over generic netlink, a dummy interface and helper iptables/ipset rules (like kube-proxy's ipvs mode)"
    }

    fn validate(&self, section: &serde_json::Value) -> Vec<String> {
        match IpvsConfig::from_section(section) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    async fn probe(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        let label = ctx.netns.label();
        proxy_core::blocking::once(&ctx.netns, supported::probe)
            .await
            .map_err(|source| DataplaneError::failed(MODE, "probe", IpvsError::Netns { netns: label, source }))?
    }

    async fn build(&self, ctx: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError> {
        let config = IpvsConfig::from_section(&ctx.section)
            .map_err(|problems| DataplaneError::Config { mode: MODE.into(), problems })?;
        Ok(Arc::new(IpvsDataplane::new(ctx, config)))
    }

    async fn cleanup(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        let config = IpvsConfig::from_section(&ctx.section).unwrap_or_default();
        IpvsDataplane::new(ctx, config).cleanup().await
    }
}
