//! switchyard's eBPF dataplane (`--proxy-mode ebpf`).
//!
//! C programs in `bpf/` (compiled by clang from build.rs, loaded with aya):
//! a TC ingress classifier on the node's interfaces does DNAT, SNAT and
//! reverse NAT with its own connection tracking; cgroup socket hooks balance
//! connections made by processes on the node. Service lookup is one hash
//! lookup on (address, port, protocol), whatever the number of Services.
//! See README.md for programs, hooks, maps, kernels, restart and cleanup.
//!
//! Modules, named as in the other backends: [`config`], [`dataplane`]
//! (the `Dataplane` impl: one sync), [`render`] (plans → desired maps, per
//! Service), [`maps`] (the `MapWriter` trait over the pinned maps: read,
//! diff, write; delete the UDP flows `proxy_core::stale` names),
//! [`client`] (load, attach, pin) and [`fake`] (in-memory maps behind
//! `MapWriter`), [`inspect`], [`cleanup`], [`supported`], [`error`]; and
//! eBPF's own: [`hooks`] (what is attached where, checked against the
//! kernel and repaired), [`monitor`] (the background thread: link events and
//! the detach check), [`trace`] (a packet tracer over rendered maps),
//! [`layout`] (the C structs); [`sys`] and [`netlink`] hold the few kernel
//! calls no crate offers.

pub mod cleanup;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod error;
pub mod fake;
pub mod hooks;
pub mod inspect;
pub mod layout;
pub mod maps;
pub mod monitor;
pub mod netlink;
pub mod render;
pub mod supported;
pub mod sys;
#[cfg(test)]
pub(crate) mod testutil;
pub mod trace;

use std::sync::Arc;

use async_trait::async_trait;
use proxy_core::{BackendContext, BackendFactory, Dataplane, DataplaneError};

pub use config::EbpfConfig;
pub use dataplane::{EbpfDataplane, EbpfMetrics};
pub use error::EbpfError;

/// The `--proxy-mode` name.
pub const MODE: &str = "ebpf";

/// What the backend does not do without `cgroupPath` (logged once at start,
/// printed by `switchyard inspect`). The socket hooks are what balance
/// connections the node's own processes make; the TC programs see only
/// packets that arrive on an interface, and a node process's packets to a
/// ClusterIP or to a node port on the node's own address never do (they
/// leave on a route, or stay on `lo`).
pub const NO_CGROUP_LIMITATION: &str = "ebpf.cgroupPath is not set, so no socket hooks are attached: \
     processes on the node (host-network pods, the kubelet) cannot reach ClusterIPs (their connections time out), \
     nor node ports on the node's own addresses (refused); pods and outside clients are served. \
     Set ebpf.cgroupPath to the node's cgroup v2 root (deploy/ mounts it at /run/switchyard/cgroupv2)";

/// Builds [`EbpfDataplane`]s for the registry.
#[derive(Debug, Default)]
pub struct EbpfFactory;

/// The factory to register under mode `ebpf`.
pub fn factory() -> Arc<dyn BackendFactory> {
    Arc::new(EbpfFactory)
}

#[async_trait]
impl BackendFactory for EbpfFactory {
    fn mode(&self) -> &str {
        MODE
    }

    fn description(&self) -> &str {
        "eBPF: TC programs with their own conntrack and cgroup socket load balancing (kernel >= 5.10; TCX on >= 6.6)"
    }

    fn validate(&self, section: &serde_json::Value) -> Vec<String> {
        EbpfConfig::parse(section).err().unwrap_or_default()
    }

    async fn probe(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        let cfg = EbpfConfig::for_netns(&ctx.section, &ctx.netns)
            .map_err(|problems| DataplaneError::Config { mode: MODE.into(), problems })?;
        supported::probe(&cfg).map_err(|reason| DataplaneError::unavailable(MODE, reason))
    }

    async fn build(&self, ctx: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError> {
        let cfg = EbpfConfig::for_netns(&ctx.section, &ctx.netns)
            .map_err(|problems| DataplaneError::Config { mode: MODE.into(), problems })?;
        Ok(Arc::new(EbpfDataplane::new(ctx.clone(), cfg)))
    }

    /// Removes our leftovers without building the dataplane: a node running
    /// another mode gets neither this mode's metrics nor its warnings.
    async fn cleanup(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        let cfg = EbpfConfig::for_netns(&ctx.section, &ctx.netns)
            .map_err(|problems| DataplaneError::Config { mode: MODE.into(), problems })?;
        proxy_core::blocking::once(&ctx.netns, move || cleanup::cleanup(&cfg))
            .await
            .map_err(|e| DataplaneError::failed(MODE, "enter network namespace", e))?
            .map_err(|e| e.into_dataplane("cleanup"))
    }
}
