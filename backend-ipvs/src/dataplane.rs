//! [`IpvsDataplane`]: the `Dataplane` impl. A sync reads (full) or updates
//! (partial) the desired state, puts switchyard0, the sets, the helper
//! rules and the sysctls right, reconciles IPVS, and deletes the UDP
//! conntrack entries the core says are stale.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use proxy_core::{
    BackendContext, Capabilities, Capability, Dataplane, DataplaneError, FamilySet, IpFamily, KernelWorker,
    MasqueradeConfig, NetNamespace, NodePortAddresses, ProgrammedState, SyncOutcome, SyncRequest,
};

use crate::client::{ClientError, Ipvs, NetlinkIpvs};
use crate::config::IpvsConfig;
use crate::reconcile::{self, Draining, Ownership};
use crate::{IpvsError, MODE, cleanup, inspect, link, rules, sysctl};

/// What a sync remembers between calls; the kernel stays the truth (full
/// syncs re-read everything), this only makes partial syncs cheap.
#[derive(Debug, Default)]
struct State {
    client: Option<NetlinkIpvs>,
    draining: Draining,
    /// The desired state as of the last successful sync; `None` forces a full sync.
    desired: Option<reconcile::Desired>,
    /// switchyard0's index and the node's addresses, read at the last full sync.
    dummy: u32,
    node_addresses: Vec<IpAddr>,
    /// Whether rules and sysctls were written by this process.
    setup_done: bool,
    /// How the helper rules are written, decided at the first full sync.
    writer: Option<rules::RuleWriter>,
    /// The snapshot of the last successful sync: the old plans the core
    /// compares with to say which UDP flows are stale (None: everything is checked).
    last: Option<Arc<proxy_core::Snapshot>>,
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
    /// Where kernel work runs (inside `netns`, one job at a time).
    worker: Arc<KernelWorker>,
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
            worker: Arc::new(KernelWorker::new("swy-ipvs", ctx.netns.clone())),
        }
    }

    /// Runs blocking `f` on the backend's worker inside the node namespace.
    async fn in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, IpvsError> + Send + 'static,
    ) -> Result<T, IpvsError> {
        let label = self.netns.label();
        self.worker.run(f).await.map_err(|source| IpvsError::Netns { netns: label, source })?
    }

    fn sync_blocking(&self, request: &SyncRequest) -> Result<SyncOutcome, IpvsError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        // Whatever a previous sync left half done is rebuilt by a full sync.
        let previous = state.desired.take();
        let full = request.full || previous.is_none() || !state.setup_done;
        let span = tracing::info_span!("sync", backend = MODE, full, services = request.snapshot.len());
        let _enter = span.enter();
        if state.client.is_none() {
            state.client = Some(NetlinkIpvs::connect()?);
        }
        let families = family_list(self.families);
        // Drift (objects of ours someone else deleted, changed or added) is
        // measured against what this process last wrote: a full sync after a
        // successful one compares the kernel with `previous`.
        let mut repairs = Repairs::default();
        let known = previous.is_some() && full;
        // switchyard0 and the sysctls are never changed by the plans: after
        // this process set them up once, any difference is drift, even when a
        // failed sync left no previous state to compare the rest with.
        let set_up_before = state.setup_done && full;
        if full {
            let mut changed = sysctl::apply()?;
            if self.config.strict_arp {
                changed.extend(sysctl::apply_strict_arp()?);
            }
            if set_up_before {
                Repairs::note(
                    &mut repairs.sysctls,
                    changed.len(),
                    "sysctls reset by someone else; set again",
                    &changed,
                );
            }
            if let Some(t) = &self.config.timeouts() {
                state.client.as_mut().map(|c| c.execute(std::slice::from_ref(t))).transpose()?;
            }
            // switchyard0 and the node's addresses are read again on every full sync.
            let (dummy, dummy_repair, node_addresses) = link::with_handle(async |h| {
                let (index, repair) = link::ensure_dummy(&h).await?;
                Ok((index, repair, link::node_addresses(&h).await?))
            })?;
            if set_up_before && dummy_repair.created {
                Repairs::note(
                    &mut repairs.interface,
                    1,
                    "switchyard0 was missing (deleted by someone else); created again",
                    NONE,
                );
            }
            if set_up_before && dummy_repair.set_up {
                Repairs::note(
                    &mut repairs.interface,
                    1,
                    "switchyard0 was down (set down by someone else); set up",
                    NONE,
                );
            }
            state.dummy = dummy;
            state.node_addresses = node_addresses;
        }
        let node_addresses = state.node_addresses.clone();
        let inputs = reconcile::Inputs {
            families: self.families,
            scheduler: &self.config.scheduler,
            node_addresses: &node_addresses,
            nodeport_addresses: &self.nodeport_addresses,
            primary_ips: &self.primary_ips,
            masquerade: request.snapshot.masquerade(),
        };
        let (desired, change, previous) = match previous {
            Some(mut desired) if !full => {
                let change = desired.update_all(request.changed.iter(), &request.snapshot, &inputs);
                (desired, Some(change), None)
            }
            previous => {
                let (desired, conflicts) = reconcile::desired_with_conflicts(&request.snapshot, &inputs);
                for c in &conflicts {
                    tracing::warn!(backend = MODE, "{c}");
                }
                (desired, None, previous)
            }
        };
        let t_desired = started.elapsed();
        let dummy = state.dummy;
        // Addresses and set members: a partial sync applies the change, a full one rebuilds.
        let (vips_added, vips_removed, removed_vips) = match &change {
            Some(c) => {
                for conflict in &c.conflicts {
                    tracing::warn!(backend = MODE, "{conflict}");
                }
                let missing: Vec<IpAddr> = c.vips_added.iter().copied().collect();
                let stale: Vec<IpAddr> = c.vips_removed.iter().copied().collect();
                if !missing.is_empty() || !stale.is_empty() {
                    link::with_handle(async |h| link::change_addresses(&h, dummy, &missing, &stale).await)?;
                }
                rules::apply_sets(&self.netns_here(), &c.sets_script())?;
                (missing.len(), stale.len(), c.vips_removed.clone())
            }
            None => {
                let vips = desired.vips();
                let (added, removed) = link::with_handle(async |h| link::sync_addresses(&h, dummy, &vips).await)?;
                // Read the sets back and write only the difference (no swap of
                // 100k-member sets when nothing changed).
                let have = rules::read_all_sets(&self.netns_here())?;
                let want = desired.sets();
                rules::apply_sets(&self.netns_here(), &rules::reconcile_sets_script(&have, &want, &families))?;
                let writer = match state.writer {
                    Some(w) => w,
                    None => {
                        let here = self.netns_here();
                        let variant = match self.config.iptables_variant.fixed() {
                            Some(v) => v,
                            None => backend_iptables::supported::detect(&here, &families)
                                .map_err(rules::RulesError::from)?,
                        };
                        let w = rules::RuleWriter { variant, mark: 1u32 << self.config.masquerade_bit.min(31) };
                        state.writer = Some(w);
                        w
                    }
                };
                let rules_repair = rules::reconcile_rules(&self.netns_here(), &families, &self.masquerade, &writer)?;
                if let Some(previous) = previous.as_ref().filter(|_| known) {
                    let before = previous.vips();
                    // Ours that someone deleted (alone or with switchyard0),
                    // and addresses someone added to switchyard0.
                    let lost: Vec<String> =
                        added.iter().filter(|ip| before.contains(ip)).map(|ip| ip.to_string()).collect();
                    let foreign: Vec<String> =
                        removed.iter().filter(|ip| !before.contains(ip)).map(|ip| ip.to_string()).collect();
                    Repairs::note(
                        &mut repairs.addresses,
                        lost.len(),
                        "switchyard0 addresses were missing; added again",
                        &lost,
                    );
                    Repairs::note(
                        &mut repairs.addresses,
                        foreign.len(),
                        "addresses on switchyard0 that we did not add; deleted",
                        &foreign,
                    );
                    let (sets, members) = rules::set_drift(&have, &want, &previous.sets(), &families);
                    Repairs::note(
                        &mut repairs.sets,
                        sets.len(),
                        "IP sets were missing (destroyed by someone else); created again",
                        &sets,
                    );
                    Repairs::note(
                        &mut repairs.set_members,
                        members,
                        "IP set members differed from what we wrote; put right",
                        NONE,
                    );
                    Repairs::note(
                        &mut repairs.chains,
                        rules_repair.chains,
                        "helper chains were missing; created again",
                        NONE,
                    );
                    Repairs::note(
                        &mut repairs.rules,
                        rules_repair.rules,
                        "helper chain rules were changed by someone else; rewritten",
                        NONE,
                    );
                    Repairs::note(
                        &mut repairs.jumps,
                        rules_repair.jumps,
                        "jumps into our helper chains were missing; inserted again",
                        NONE,
                    );
                }
                (added.len(), removed.len(), BTreeSet::new())
            }
        };
        let t_rules = started.elapsed();
        // Ownership needs the VIPs of the virtual servers this sync may delete:
        // all of them on a full sync, the touched ones on a partial one. A VIP
        // just removed still marks its virtual servers as ours.
        let mut owned_vips = match &change {
            None => desired.vips(),
            Some(c) => c.keys.iter().map(|k| k.addr).filter(|a| desired.has_vip(a)).collect(),
        };
        owned_vips.extend(removed_vips);
        let owner = Ownership {
            vips: owned_vips,
            node_addresses: node_addresses.iter().copied().collect(),
            node_port_range: self.config.node_port_range,
        };
        let grace = Duration::from_secs(self.config.graceful_termination_seconds);
        let keys = change.as_ref().map(|c| c.keys.clone());
        let State { client, draining, .. } = &mut *state;
        let client = client.as_mut().ok_or(ClientError::Unavailable)?;
        let previous = previous.as_ref().filter(|_| known);
        let stats = reconcile::reconcile_with(
            client,
            &desired,
            previous,
            keys.as_ref(),
            &owner,
            draining,
            grace,
            Instant::now(),
        )?;
        Repairs::note(
            &mut repairs.services,
            stats.repaired_services,
            "virtual servers of ours were deleted, changed or added by someone else; put right",
            NONE,
        );
        Repairs::note(
            &mut repairs.dests,
            stats.repaired_dests,
            "real servers of ours were deleted, changed or added by someone else; put right",
            NONE,
        );
        let t_ipvs = started.elapsed();
        let dests: usize = desired.services.values().map(|s| s.dests.len()).sum();
        let objects = BTreeMap::from([
            ("virtual servers".to_string(), desired.services.len() as u64),
            ("real servers".to_string(), dests as u64),
            ("draining real servers".to_string(), state.draining.since.len() as u64),
            ("switchyard0 addresses".to_string(), desired.vip_count() as u64),
        ]);
        state.desired = Some(desired);
        state.setup_done = true;
        // IPVS expires a flow to a deleted real server on its next packet
        // (expire_nodest_conn), but a flow that met a Service without real
        // servers, or one IPVS re-bound elsewhere, keeps its conntrack entry:
        // delete what the core says is stale, as iptables does.
        let everything = state.last.is_none();
        let work =
            proxy_core::stale::stale_udp_of_sync(families.iter().copied(), state.last.as_deref(), request, everything);
        state.last = Some(request.snapshot.clone());
        let conntrack_deleted = clear_stale_udp(work);
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
            conntrack_deleted,
            ms_desired = t_desired.as_millis() as u64,
            ms_links_and_rules = (t_rules - t_desired).as_millis() as u64,
            ms_ipvs = (t_ipvs - t_rules).as_millis() as u64,
            "ipvs sync done"
        );
        let mut outcome = SyncOutcome { full, objects, ..Default::default() };
        repairs.record(&mut outcome);
        Ok(outcome)
    }

    /// The namespace for commands started from a thread already inside the
    /// node namespace: a child inherits the namespaces of the thread that forks it.
    fn netns_here(&self) -> NetNamespace {
        NetNamespace::current()
    }
}

/// Deletes stale UDP conntrack entries in the calling thread's namespace
/// (the sync runs inside the node's); a failure is logged, not fatal: the
/// flows time out, as they would without this. Returns how many went.
fn clear_stale_udp(work: BTreeMap<IpFamily, Vec<proxy_core::stale::StaleFlows>>) -> usize {
    let mut deleted = 0;
    for (family, rules) in work.into_iter().filter(|(_, r)| !r.is_empty()) {
        match proxy_core::conntrack::clear_stale_udp(&NetNamespace::current(), family, rules) {
            Ok(n) => deleted += n,
            Err(e) => tracing::warn!(
                backend = MODE,
                ip_family = %family,
                error = %proxy_core::ErrorChain(&e),
                "clearing stale UDP conntrack entries failed"
            ),
        }
    }
    deleted
}

/// No object names to log.
const NONE: &[&str] = &[];

/// Drift a full sync found and put right, by kind (`SyncOutcome::repairs`).
#[derive(Debug, Default)]
struct Repairs {
    interface: usize,
    addresses: usize,
    services: usize,
    dests: usize,
    sets: usize,
    set_members: usize,
    chains: usize,
    rules: usize,
    jumps: usize,
    sysctls: usize,
}

impl Repairs {
    /// Adds `n` to `counter` and logs `what` (with up to eight of `names`).
    fn note(counter: &mut usize, n: usize, what: &str, names: &[impl AsRef<str>]) {
        if n == 0 {
            return;
        }
        *counter += n;
        let shown: Vec<&str> = names.iter().take(8).map(AsRef::as_ref).collect();
        tracing::warn!(backend = MODE, count = n, objects = ?shown, "{what}");
    }

    fn record(&self, outcome: &mut SyncOutcome) {
        for (kind, n) in [
            ("interface", self.interface),
            ("address", self.addresses),
            ("virtual server", self.services),
            ("real server", self.dests),
            ("ipset", self.sets),
            ("ipset member", self.set_members),
            ("chain", self.chains),
            ("rule", self.rules),
            ("hook jump", self.jumps),
            ("sysctl", self.sysctls),
        ] {
            outcome.repaired(kind, n as u64);
        }
    }
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
            // and rescheduled on its next packet; the conntrack entries the
            // core names stale are deleted after each sync.
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
            worker: self.worker.clone(),
        };
        let result = self.in_netns(move || this.sync_blocking(&request)).await;
        if result.is_err() {
            // Next time, rebuild everything from the kernel.
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.desired = None;
        }
        result.map_err(|e| e.into_dataplane("sync"))
    }

    async fn inspect(&self) -> Result<ProgrammedState, DataplaneError> {
        let families = self.families;
        let range = self.config.node_port_range;
        self.in_netns(move || inspect::inspect_blocking(families, range)).await.map_err(|e| e.into_dataplane("inspect"))
    }

    async fn cleanup(&self) -> Result<(), DataplaneError> {
        let range = self.config.node_port_range;
        let result = self.in_netns(move || cleanup::cleanup_blocking(range)).await;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = State::default();
        result.map_err(|e| e.into_dataplane("cleanup"))
    }
}
