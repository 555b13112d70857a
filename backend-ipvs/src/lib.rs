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
//! Modules: `message` (wire format), `client` (socket), `fake` (in-memory
//! IPVS), `reconcile` (desired state and operations), `link` (switchyard0),
//! `rules` (sets and iptables), `sysctl`, `supported` (probe), `cleanup`.

pub mod cleanup;
pub mod client;
pub mod config;
pub mod fake;
pub mod link;
pub mod message;
pub mod reconcile;
pub mod rules;
pub mod supported;
pub mod sysctl;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use proxy_core::{
    BackendContext, BackendFactory, Capabilities, Capability, Dataplane, DataplaneError, EmptyVerdict, FamilySet,
    FrontendKind, IpFamily, MasqueradeConfig, NetNamespace, NodePortAddresses, ProgrammedFrontend, ProgrammedState,
    ServiceName, SyncOutcome, SyncRequest,
};

use crate::client::{ClientError, Ipvs, NetlinkIpvs};
pub use crate::config::IpvsConfig;
use crate::message::ServiceKey;
use crate::reconcile::{Draining, Ownership};
use crate::rules::{Member, SetKind, Sets};

/// The `--proxy-mode` name.
pub const MODE: &str = "ipvs";

/// Errors of the IPVS backend.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error(transparent)]
    Rules(#[from] rules::RulesError),
    #[error("sysctl {name}: {source}")]
    Sysctl {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
}

impl IpvsError {
    fn into_dataplane(self, operation: &str) -> DataplaneError {
        match self {
            IpvsError::Client(ClientError::Unavailable) => {
                DataplaneError::unavailable(MODE, ClientError::Unavailable.to_string())
            }
            e => DataplaneError::failed(MODE, operation, e),
        }
    }
}

/// What a sync remembers between calls; the kernel stays the truth (full
/// syncs re-read everything), this only makes partial syncs cheap.
#[derive(Debug, Default)]
struct State {
    client: Option<NetlinkIpvs>,
    draining: Draining,
    /// Virtual servers of each Service at the last successful sync.
    programmed: BTreeMap<ServiceName, BTreeSet<ServiceKey>>,
    /// Set contents at the last successful sync; `None` forces a full rebuild.
    sets: Option<Sets>,
    /// switchyard0's addresses at the last successful sync.
    vips: Option<BTreeSet<IpAddr>>,
    /// Whether rules and sysctls were written by this process.
    setup_done: bool,
}

/// The IPVS dataplane.
#[derive(Debug)]
pub struct IpvsDataplane {
    netns: NetNamespace,
    families: FamilySet,
    config: IpvsConfig,
    masquerade: MasqueradeConfig,
    nodeport_addresses: NodePortAddresses,
    primary_ips: Vec<IpAddr>,
    state: Arc<Mutex<State>>,
}

fn family_list(families: FamilySet) -> Vec<IpFamily> {
    families.iter().collect()
}

impl IpvsDataplane {
    pub fn new(ctx: &BackendContext, config: IpvsConfig) -> Self {
        IpvsDataplane {
            netns: ctx.netns.clone(),
            families: ctx.families,
            config,
            masquerade: ctx.masquerade.clone(),
            nodeport_addresses: ctx.nodeport_addresses.clone(),
            primary_ips: ctx.node_ips.clone(),
            state: Arc::default(),
        }
    }

    /// Runs blocking `f` on a thread inside the node namespace.
    async fn in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, IpvsError> + Send + 'static,
    ) -> Result<T, IpvsError> {
        let label = self.netns.label();
        self.netns.run_async(f).await.map_err(|source| IpvsError::Netns { netns: label, source })?
    }

    fn sync_blocking(&self, request: &SyncRequest) -> Result<SyncOutcome, IpvsError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let full = request.full || state.sets.is_none() || state.vips.is_none() || !state.setup_done;
        let span = tracing::info_span!("sync", backend = MODE, full, services = request.snapshot.len());
        let _enter = span.enter();
        if state.client.is_none() {
            state.client = Some(NetlinkIpvs::connect()?);
        }
        let families = family_list(self.families);
        if full || !state.setup_done {
            sysctl::apply()?;
            if let Some(t) = &self.config.timeouts() {
                state.client.as_mut().map(|c| c.execute(std::slice::from_ref(t))).transpose()?;
            }
        }
        // switchyard0 and the node's addresses.
        let (dummy, node_addresses) = link::with_handle(async |h| {
            let index = link::ensure_dummy(&h).await?;
            Ok((index, link::node_addresses(&h).await?))
        })?;
        let inputs = reconcile::Inputs {
            families: self.families,
            scheduler: &self.config.scheduler,
            node_addresses: &node_addresses,
            nodeport_addresses: &self.nodeport_addresses,
            primary_ips: &self.primary_ips,
        };
        let desired = reconcile::desired(&request.snapshot, &inputs);
        for c in &desired.conflicts {
            tracing::warn!(backend = MODE, "{c}");
        }
        let t_desired = started.elapsed();
        // A partial sync trusts the last applied addresses; a full one reads the kernel.
        let (vips_added, vips_removed) = match (&state.vips, full) {
            (Some(prev), false) => {
                let missing: Vec<IpAddr> = desired.vips.difference(prev).copied().collect();
                let stale: Vec<IpAddr> = prev.difference(&desired.vips).copied().collect();
                link::with_handle(async |h| link::change_addresses(&h, dummy, &missing, &stale).await)?;
                (missing.len(), stale.len())
            }
            _ => link::with_handle(async |h| link::sync_addresses(&h, dummy, &desired.vips).await)?,
        };
        state.vips = None; // until the sync succeeds
        let t_links = started.elapsed();
        // Sets before the rules that reference them.
        let script = match (&state.sets, full) {
            (Some(old), false) => rules::diff_sets_script(old, &desired.sets),
            _ => rules::full_sets_script(&desired.sets, &families),
        };
        rules::apply_sets(&self.netns_here(), &script)?;
        if full || !state.setup_done {
            rules::apply_rules(&self.netns_here(), &families, &self.masquerade)?;
        }
        state.sets = None; // until IPVS is done too
        let t_rules = started.elapsed();
        let keys: Option<BTreeSet<ServiceKey>> = (!full).then(|| {
            request
                .changed
                .iter()
                .flat_map(|name| {
                    let now = desired.by_service.get(name).into_iter().flatten();
                    let before = state.programmed.get(name).into_iter().flatten();
                    now.chain(before).copied()
                })
                .collect()
        });
        let owner = Ownership {
            vips: desired.vips.clone(),
            node_addresses: node_addresses.iter().copied().collect(),
            node_port_range: self.config.node_port_range,
        };
        let grace = Duration::from_secs(self.config.graceful_termination_seconds);
        let State { client, draining, .. } = &mut *state;
        let client = client.as_mut().ok_or(ClientError::Unavailable)?;
        let stats = reconcile::reconcile(client, &desired, keys.as_ref(), &owner, draining, grace, Instant::now())?;
        state.programmed = desired.by_service.clone();
        state.sets = Some(desired.sets.clone());
        state.vips = Some(desired.vips.clone());
        state.setup_done = true;
        let t_ipvs = started.elapsed();
        let dests: usize = desired.services.values().map(|s| s.dests.len()).sum();
        tracing::info!(
            backend = MODE,
            full,
            requests = stats.requests,
            services_added = stats.services_added,
            services_deleted = stats.services_deleted,
            dests_added = stats.dests_added,
            dests_drained = stats.dests_drained,
            dests_deleted = stats.dests_deleted,
            vips_added,
            vips_removed,
            ms_desired = t_desired.as_millis() as u64,
            ms_links = (t_links - t_desired).as_millis() as u64,
            ms_rules = (t_rules - t_links).as_millis() as u64,
            ms_ipvs = (t_ipvs - t_rules).as_millis() as u64,
            "ipvs sync done"
        );
        Ok(SyncOutcome {
            full,
            objects: BTreeMap::from([
                ("virtual servers".to_string(), desired.services.len() as u64),
                ("real servers".to_string(), dests as u64),
                ("draining real servers".to_string(), state.draining.since.len() as u64),
                ("switchyard0 addresses".to_string(), desired.vips.len() as u64),
            ]),
        })
    }

    /// The namespace for commands started from a thread already inside the
    /// node namespace: a child inherits the namespaces of the thread that forks it.
    fn netns_here(&self) -> NetNamespace {
        NetNamespace::current()
    }
}

fn inspect_blocking(families: FamilySet, node_port_range: (u16, u16)) -> Result<ProgrammedState, IpvsError> {
    let mut client = NetlinkIpvs::connect()?;
    let here = NetNamespace::current();
    let (vips, node_addresses) = link::with_handle(async |h| {
        let vips: BTreeSet<IpAddr> = match link::dummy_index(&h).await? {
            Some(i) => link::addresses(&h, Some(i)).await?.into_iter().map(|(_, ip)| ip).collect(),
            None => BTreeSet::new(),
        };
        Ok((vips, link::node_addresses(&h).await?))
    })?;
    let owner = Ownership { vips, node_addresses: node_addresses.into_iter().collect(), node_port_range };
    let mut sets: BTreeMap<(SetKind, IpFamily), BTreeSet<Member>> = BTreeMap::new();
    for family in families.iter() {
        for kind in [SetKind::ClusterIp, SetKind::ExternalIp, SetKind::LoadBalancer, SetKind::NodePort, SetKind::Drop] {
            sets.insert((kind, family), rules::read_set(&here, kind, family)?);
        }
    }
    let in_set = |kind: SetKind, key: &ServiceKey| {
        sets.get(&(kind, key.family())).is_some_and(|s| s.contains(&Member::ip_port(key.addr, key.protocol, key.port)))
    };
    let mut state = ProgrammedState::default();
    for vs in client.services()? {
        if !owner.owns(&vs.key) || !families.contains(vs.key.family()) {
            continue;
        }
        let kind = [SetKind::ClusterIp, SetKind::ExternalIp, SetKind::LoadBalancer, SetKind::NodePort]
            .into_iter()
            .find(|k| in_set(*k, &vs.key))
            .map(|k| match k {
                SetKind::ClusterIp => FrontendKind::ClusterIP,
                SetKind::ExternalIp => FrontendKind::ExternalIP,
                SetKind::LoadBalancer => FrontendKind::LoadBalancer,
                _ => FrontendKind::NodePort,
            })
            // Unclassified: a VIP is reported as a ClusterIP, a node address as a NodePort.
            .unwrap_or(if owner.vips.contains(&vs.key.addr) {
                FrontendKind::ClusterIP
            } else {
                FrontendKind::NodePort
            });
        let dests = client.dests(&vs.key)?;
        let frontend = reconcile::frontend_of(&vs.key, kind);
        let entry = state.frontends.entry(frontend).or_insert_with(ProgrammedFrontend::default);
        entry.endpoints.extend(dests.iter().filter(|d| d.weight > 0).map(|d| d.socket_addr()));
        entry.affinity_timeout_seconds = vs.persistence();
        entry.empty_verdict = entry
            .endpoints
            .is_empty()
            .then(|| if in_set(SetKind::Drop, &vs.key) { EmptyVerdict::Drop } else { EmptyVerdict::Reject });
    }
    Ok(state)
}

#[async_trait]
impl Dataplane for IpvsDataplane {
    fn mode(&self) -> &str {
        MODE
    }

    fn capabilities(&self) -> Capabilities {
        use Capability::*;
        Capabilities::new([
            Tcp,
            Udp,
            Sctp,
            IPv4,
            IPv6,
            ClusterIP,
            NodePort,
            ExternalIPs,
            LoadBalancerIPs,
            SessionAffinity,
            ExternalTrafficPolicyLocal,
            InternalTrafficPolicyLocal,
            SourceRanges,
            Reject,
            Masquerade,
            Hairpin,
            // expire_nodest_conn=1: a flow to a deleted real server is expired
            // (with its conntrack entry, conntrack=1) and rescheduled on its next packet.
            StaleUdpConntrack,
            HostNetworkClients,
        ])
    }

    async fn sync(&self, request: SyncRequest) -> Result<SyncOutcome, DataplaneError> {
        let this = IpvsDataplane {
            netns: self.netns.clone(),
            families: self.families,
            config: self.config.clone(),
            masquerade: self.masquerade.clone(),
            nodeport_addresses: self.nodeport_addresses.clone(),
            primary_ips: self.primary_ips.clone(),
            state: self.state.clone(),
        };
        let result = self.in_netns(move || this.sync_blocking(&request)).await;
        if result.is_err() {
            // Next time, rebuild everything from the kernel.
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.sets = None;
        }
        result.map_err(|e| e.into_dataplane("sync"))
    }

    async fn inspect(&self) -> Result<ProgrammedState, DataplaneError> {
        let families = self.families;
        let range = self.config.node_port_range;
        self.in_netns(move || inspect_blocking(families, range)).await.map_err(|e| e.into_dataplane("inspect"))
    }

    async fn cleanup(&self) -> Result<(), DataplaneError> {
        let range = self.config.node_port_range;
        let result = self.in_netns(move || cleanup::cleanup_blocking(range)).await;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = State::default();
        result.map_err(|e| e.into_dataplane("cleanup"))
    }
}

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
        let netns = ctx.netns.clone();
        let label = netns.label();
        netns
            .run_async(supported::probe)
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
