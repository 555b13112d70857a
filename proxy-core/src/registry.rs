//! The backend registry: proxy-mode names mapped to factories.
//!
//! There is no global registry. The `switchyard` binary builds one with the
//! built-in backends; a custom build adds its own factories through the same
//! [`Registry::register`] call and passes the registry to the daemon's entry point.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::dataplane::{Dataplane, DataplaneError};
use crate::model::FamilySet;
use crate::netns::NetNamespace;
use crate::plan::MasqueradeConfig;

/// `--nodeport-addresses`: which node addresses accept NodePort traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodePortAddresses {
    /// Every local address of the node (kube-proxy's iptables default).
    #[default]
    All,
    /// The node's primary addresses (`--nodeport-addresses primary`).
    Primary,
    /// Local addresses inside these CIDRs.
    Cidrs(Vec<IpNet>),
}

impl NodePortAddresses {
    /// Whether a local address of the node accepts NodePort traffic.
    pub fn selects(&self, ip: std::net::IpAddr, primary: &[std::net::IpAddr]) -> bool {
        match self {
            NodePortAddresses::All => true,
            NodePortAddresses::Primary => primary.contains(&ip),
            NodePortAddresses::Cidrs(cidrs) => cidrs.iter().any(|c| c.contains(&ip)),
        }
    }
}

/// Everything a backend is built from.
#[derive(Clone)]
pub struct BackendContext {
    pub node_name: Arc<str>,
    pub families: FamilySet,
    /// Where kernel objects go: the daemon's own network namespace in
    /// production, a lab namespace in tests.
    pub netns: NetNamespace,
    pub masquerade: MasqueradeConfig,
    pub nodeport_addresses: NodePortAddresses,
    /// The node's primary addresses (for `NodePortAddresses::Primary` and SNAT).
    pub node_ips: Vec<std::net::IpAddr>,
    /// The backend's own configuration section (`iptables:`, `ipvs:`,
    /// `ebpf:`, or a plugin's), as written in the config file.
    pub section: serde_json::Value,
    /// Where the backend registers its own metrics.
    pub metrics: Arc<Mutex<prometheus_client::registry::Registry>>,
}

impl fmt::Debug for BackendContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendContext")
            .field("node_name", &self.node_name)
            .field("families", &self.families)
            .field("netns", &self.netns)
            .field("masquerade", &self.masquerade)
            .field("nodeport_addresses", &self.nodeport_addresses)
            .field("node_ips", &self.node_ips)
            .field("section", &self.section)
            .finish_non_exhaustive()
    }
}

impl BackendContext {
    /// A context for tests and tools: one node name, IPv4, the given namespace.
    pub fn new(node_name: &str, netns: NetNamespace) -> Self {
        BackendContext {
            node_name: node_name.into(),
            families: FamilySet::V4,
            netns,
            masquerade: MasqueradeConfig::default(),
            nodeport_addresses: NodePortAddresses::All,
            node_ips: Vec::new(),
            section: serde_json::Value::Null,
            metrics: Arc::new(Mutex::new(prometheus_client::registry::Registry::default())),
        }
    }
}

/// Builds one kind of backend.
#[async_trait]
pub trait BackendFactory: Send + Sync {
    /// The `--proxy-mode` name.
    fn mode(&self) -> &str;

    /// One line for `--help` and error messages.
    fn description(&self) -> &str;

    /// Problems in the backend's configuration section, each naming its field.
    fn validate(&self, _section: &serde_json::Value) -> Vec<String> {
        Vec::new()
    }

    /// Checks that the node can run this mode (binaries, kernel features,
    /// modules) without changing anything.
    async fn probe(&self, ctx: &BackendContext) -> Result<(), DataplaneError>;

    /// Builds the backend. Nothing in the kernel changes until its first sync.
    async fn build(&self, ctx: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError>;

    /// What this mode needs done with full privileges before it runs with
    /// only `CAP_NET_ADMIN` (`switchyard --init-only`, as kube-proxy's: a
    /// privileged init container, then an unprivileged one): the sysctls it
    /// writes, which a container without privileges sees read-only. The main
    /// process then finds them set and writes nothing. Default: nothing.
    async fn init_only(&self, _ctx: &BackendContext) -> Result<(), DataplaneError> {
        Ok(())
    }

    /// Removes everything this mode ever installs, even where it cannot run
    /// (`switchyard --cleanup`, switching modes). The default builds the
    /// backend and calls its `cleanup`; a mode is unavailable means nothing to clean.
    async fn cleanup(&self, ctx: &BackendContext) -> Result<(), DataplaneError> {
        match self.build(ctx).await {
            Ok(dp) => dp.cleanup().await,
            Err(DataplaneError::Unavailable { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Errors of the registry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("proxy mode {0:?} is registered twice")]
    Duplicate(String),
    #[error("unknown proxy mode {mode:?}; known modes: {}", known.join(", "))]
    Unknown { mode: String, known: Vec<String> },
}

/// Proxy-mode names mapped to factories.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Arc<dyn BackendFactory>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a factory under its mode name.
    pub fn register(&mut self, factory: Arc<dyn BackendFactory>) -> Result<(), RegistryError> {
        let mode = factory.mode().to_string();
        if self.factories.contains_key(&mode) {
            return Err(RegistryError::Duplicate(mode));
        }
        self.factories.insert(mode, factory);
        Ok(())
    }

    /// The factory for a mode.
    pub fn get(&self, mode: &str) -> Result<&Arc<dyn BackendFactory>, RegistryError> {
        self.factories.get(mode).ok_or_else(|| RegistryError::Unknown { mode: mode.to_string(), known: self.modes() })
    }

    /// Every registered mode name, sorted.
    pub fn modes(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    pub fn factories(&self) -> impl Iterator<Item = &Arc<dyn BackendFactory>> {
        self.factories.values()
    }
}
