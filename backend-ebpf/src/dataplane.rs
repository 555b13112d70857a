//! [`EbpfDataplane`]: the `Dataplane` impl. A sync loads the programs once,
//! attaches the hooks, writes the node's view and the service maps (full or
//! per changed Service, through [`crate::maps`]) and deletes the UDP flows
//! `proxy_core::stale` names; all of it on the backend's
//! `proxy_core::KernelWorker`, inside its namespace.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use proxy_core::{
    BackendContext, Capabilities, Capability, Dataplane, DataplaneError, DataplaneHealth, IpFamily, ProgrammedState,
    SyncOutcome, SyncRequest,
};

use crate::{
    EbpfConfig, EbpfError, MODE, NO_CGROUP_LIMITATION, cleanup, client, hooks, inspect, layout, maps, monitor, render,
};

/// The backend's own metrics.
#[derive(Clone, Debug, Default)]
pub struct EbpfMetrics {
    /// `switchyard_ebpf_map_entries{map}`
    pub map_entries: Family<Vec<(String, String)>, Gauge>,
    /// `switchyard_ebpf_map_full_total{map}`: syncs refused because a map was full.
    pub map_full: Family<Vec<(String, String)>, Counter>,
    /// `switchyard_ebpf_skipped_frontends_total`: frontends two Services
    /// claim, and SCTP frontends that would need port translation.
    pub skipped_frontends: Counter,
    /// `switchyard_ebpf_datapath_events{event}`: the programs' own counters.
    pub datapath: Family<Vec<(String, String)>, Gauge>,
}

impl EbpfMetrics {
    fn register(ctx: &BackendContext) -> EbpfMetrics {
        let m = EbpfMetrics::default();
        if let Ok(mut reg) = ctx.metrics.lock() {
            reg.register("switchyard_ebpf_map_entries", "Entries in each eBPF map", m.map_entries.clone());
            reg.register("switchyard_ebpf_map_full", "Syncs refused because an eBPF map was full", m.map_full.clone());
            reg.register(
                "switchyard_ebpf_skipped_frontends",
                "Frontends not programmed because another Service port claims them",
                m.skipped_frontends.clone(),
            );
            reg.register("switchyard_ebpf_datapath_events", "Counters kept by the eBPF programs", m.datapath.clone());
        }
        m
    }
}

/// What stays loaded between syncs.
#[derive(Default)]
pub(crate) struct Loaded {
    ebpf: Option<aya::Ebpf>,
    maps: Option<maps::Maps>,
    state: ServiceState,
    /// Where the programs are attached, with the links held open.
    hooks: hooks::Hooks,
    /// The node's addresses and the config last written to swy_node_addrs and swy_config.
    node: Option<(BTreeMap<layout::Addr, u32>, layout::Config)>,
}

/// One background pass (see [`monitor`]): interfaces after a link event,
/// plus every hook in the kernel when `check`. None before the first load.
pub(crate) fn background_pass(loaded: &mut Loaded, cfg: &EbpfConfig, tcx: bool, check: bool) -> Option<hooks::Pass> {
    let ebpf = loaded.ebpf.as_mut()?;
    let mut pass = hooks::Pass::default();
    if let Err(e) = loaded.hooks.reconcile_interfaces(ebpf, cfg, tcx, &mut pass) {
        tracing::warn!(backend = MODE, error = %proxy_core::ErrorChain(&e), "listing interfaces failed");
    }
    if check {
        loaded.hooks.verify(ebpf, cfg, tcx, &mut pass);
    }
    loaded.hooks.defer(&pass);
    Some(pass)
}

/// Sets the dataplane's health, logging changes (not every repeated check).
pub(crate) fn set_health(cell: &Mutex<DataplaneHealth>, new: DataplaneHealth) {
    let mut h = cell.lock().unwrap_or_else(|e| e.into_inner());
    if *h != new {
        match &new {
            DataplaneHealth::Down { reason } => tracing::error!(backend = MODE, %reason, "eBPF datapath down"),
            DataplaneHealth::Up => tracing::info!(backend = MODE, "eBPF datapath attached everywhere again"),
        }
        *h = new;
    }
}

/// What the service maps hold, as the last syncs wrote it.
#[derive(Default)]
struct ServiceState {
    /// What the service maps hold after the last successful apply.
    cache: Option<maps::Programmed>,
    /// Each Service's share of `cache` (None: unknown, the next sync is full).
    by_service: Option<BTreeMap<proxy_core::ServiceName, render::Share>>,
    /// Which Service holds each frontend.
    owners: BTreeMap<layout::SvcKey, proxy_core::ServiceName>,
    /// The last full render skipped frontends two Services claim: partial
    /// syncs would not know when one is free again.
    contested: bool,
    /// Entries each sized map holds (`maps::needs` of what `cache` holds).
    totals: [(&'static str, usize); 5],
    /// The snapshot of the last successful sync (the old plans for
    /// `proxy_core::stale`).
    last: Option<Arc<proxy_core::Snapshot>>,
}

/// The eBPF dataplane.
pub struct EbpfDataplane {
    ctx: BackendContext,
    cfg: EbpfConfig,
    loaded: Arc<Mutex<Loaded>>,
    metrics: EbpfMetrics,
    /// Down while a hook is detached and re-attaching it failed.
    health: Arc<Mutex<DataplaneHealth>>,
    /// The background thread (started by the first sync).
    monitor: Arc<Mutex<Option<monitor::Monitor>>>,
    /// Where kernel work runs (inside `ctx.netns`, one job at a time).
    worker: proxy_core::KernelWorker,
}

impl Drop for EbpfDataplane {
    fn drop(&mut self) {
        // Stop the monitor before the links it could re-attach are released:
        // a next process (a restart) owns them from now on.
        drop(self.monitor.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl std::fmt::Debug for EbpfDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfDataplane").field("netns", &self.ctx.netns).field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl EbpfDataplane {
    /// Builds the dataplane; nothing in the kernel changes until the first
    /// sync. Warns once about what the configuration leaves unserved.
    pub fn new(ctx: BackendContext, cfg: EbpfConfig) -> EbpfDataplane {
        let metrics = EbpfMetrics::register(&ctx);
        let worker = proxy_core::KernelWorker::new("swy-ebpf", ctx.netns.clone());
        let dp = EbpfDataplane {
            ctx,
            cfg,
            loaded: Arc::default(),
            metrics,
            health: Arc::default(),
            monitor: Arc::default(),
            worker,
        };
        for limitation in dp.limitations() {
            tracing::warn!(backend = MODE, "{limitation}");
        }
        dp
    }

    pub fn config(&self) -> &EbpfConfig {
        &self.cfg
    }

    fn render_options(&self) -> render::RenderOptions {
        render::RenderOptions { maglev_all: self.cfg.maglev, maglev_services: self.cfg.maglev_services.clone() }
    }
}

/// The node's addresses for `swy_node_addrs`, and the SNAT addresses.
fn node_view(ctx: &BackendContext) -> (BTreeMap<layout::Addr, u32>, layout::Config) {
    let locals = client::local_addresses();
    let mut addrs = BTreeMap::new();
    for (_, ip) in &locals {
        let link_local = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
        let mut flags = layout::NODE_ADDR;
        // kube-proxy accepts NodePorts on 127.0.0.1 but not on ::1.
        let loopback_ok = !ip.is_loopback() || ip.is_ipv4();
        if !link_local && loopback_ok && ctx.nodeport_addresses.selects(*ip, &ctx.node_ips) {
            flags |= layout::NODE_NODEPORT;
        }
        addrs.insert(layout::Addr::from(*ip), flags);
    }
    let pick = |family: IpFamily| -> layout::Addr {
        let usable = |ip: &IpAddr| {
            IpFamily::of(ip) == family
                && !ip.is_loopback()
                && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
        };
        ctx.node_ips
            .iter()
            .find(|ip| usable(ip))
            .or_else(|| locals.iter().map(|(_, ip)| ip).find(|ip| usable(ip)))
            .map(|ip| layout::Addr::from(*ip))
            .unwrap_or_default()
    };
    (addrs, layout::Config { snat4: pick(IpFamily::V4), snat6: pick(IpFamily::V6), ..Default::default() })
}

struct SyncJob {
    ctx: BackendContext,
    cfg: EbpfConfig,
    loaded: Arc<Mutex<Loaded>>,
    metrics: EbpfMetrics,
    opts: render::RenderOptions,
    health: Arc<Mutex<DataplaneHealth>>,
    monitor: Arc<Mutex<Option<monitor::Monitor>>>,
}

impl SyncJob {
    /// Runs inside the backend's namespace.
    fn run(self, request: SyncRequest) -> Result<SyncOutcome, EbpfError> {
        let mut guard = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = &mut *guard;
        let tcx = client::use_tcx();
        if loaded.ebpf.is_none() {
            let ebpf = client::load(&self.cfg)?;
            loaded.maps = Some(maps::Maps::open(&self.cfg.maps_dir())?);
            loaded.hooks = hooks::Hooks { prog_ids: client::program_ids(&ebpf), ..Default::default() };
            loaded.ebpf = Some(ebpf);
            loaded.state = ServiceState::default();
            loaded.node = None;
            tracing::info!(pin_path = %self.cfg.pin_path.display(), tcx, "eBPF programs loaded");
        }
        let (Some(ebpf), Some(maps)) = (loaded.ebpf.as_mut(), loaded.maps.as_mut()) else {
            return Err(EbpfError::MissingProgram(client::TC_PROGRAM));
        };

        // Hooks: attach to new interfaces (or ones recreated under the same
        // name); a full sync also checks every hook in the kernel and
        // repairs what is detached or unpinned. A hook that cannot be
        // attached does not fail the sync (the maps still serve every other
        // hook): it makes the dataplane Down until it is attached.
        let mut pass = hooks::Pass::default();
        loaded.hooks.reconcile_interfaces(ebpf, &self.cfg, tcx, &mut pass)?;
        let first = loaded.hooks.cgroup.is_empty() && self.cfg.cgroup_path.is_some();
        if request.full || first {
            loaded.hooks.verify(ebpf, &self.cfg, tcx, &mut pass);
            set_health(&self.health, pass.health());
        } else if !pass.failures.is_empty() {
            set_health(&self.health, pass.health());
        }
        // Reported by the first sync that succeeds (they are logged already).
        loaded.hooks.defer(&pass);
        if let Ok(mut m) = self.monitor.lock()
            && m.is_none()
        {
            let shared = monitor::Shared {
                netns: self.ctx.netns.clone(),
                cfg: self.cfg.clone(),
                tcx,
                loaded: self.loaded.clone(),
                health: self.health.clone(),
            };
            match monitor::Monitor::start(shared) {
                Ok(started) => *m = Some(started),
                Err(e) => {
                    tracing::warn!(backend = MODE, error = %e, "the eBPF monitor did not start; only syncs check the datapath")
                }
            }
        }

        let (node_addrs, mut config) = node_view(&self.ctx);
        config.netns_cookie = if self.cfg.cgroup_path.is_some() { client::netns_cookie() } else { 0 };
        config.snat_port_min = self.cfg.snat_port_min;
        config.snat_port_max = self.cfg.snat_port_max;
        config.udp_timeout_s = self.cfg.udp_timeout_seconds;
        let node = (node_addrs, config);
        // Unchanged since the last write (most syncs): no map reads.
        if request.full || loaded.node.as_ref() != Some(&node) {
            loaded.node = None;
            maps::set_node_addrs(maps, &node.0)?;
            maps::set_config(maps, &node.1)?;
            loaded.node = Some(node);
        }

        let state = &mut loaded.state;
        let partial = if request.full { None } else { self.partial(maps, state, &request)? };
        let (full, mut stats) = match partial {
            Some(stats) => (false, stats),
            None => (request.full || state.cache.is_none(), self.full(maps, state, &request)?),
        };
        // Which UDP flows are stale is the core's answer, against the plans
        // of the last successful sync (none after a load: every flow is
        // checked, it may be a previous process's).
        let everything = state.last.is_none();
        let work = proxy_core::stale::stale_udp_of_sync(IpFamily::ALL, state.last.as_deref(), &request, everything);
        stats.udp_flushed = maps::flush_stale_udp(maps, &proxy_core::stale::StaleIndex::new(work.values().flatten()))?;
        state.last = Some(request.snapshot.clone());
        let Some(current) = state.cache.as_ref() else { return Err(EbpfError::MissingProgram(client::TC_PROGRAM)) };
        let slots = state.totals[2].1;
        let mut objects = BTreeMap::new();
        objects.insert("frontends".to_string(), current.frontends.len() as u64);
        objects.insert("routes".to_string(), current.routes.len() as u64);
        objects.insert("backend slots".to_string(), slots as u64);
        objects.insert("interfaces".to_string(), loaded.hooks.attached.len() as u64);
        for (name, n) in
            [("swy_svc", current.frontends.len()), ("swy_route", current.routes.len()), ("swy_backend", slots)]
        {
            self.metrics.map_entries.get_or_create(&vec![("map".into(), name.into())]).set(n as i64);
        }
        for (name, v) in maps.stats() {
            self.metrics.datapath.get_or_create(&vec![("event".into(), name.into())]).set(v as i64);
        }
        tracing::debug!(
            backend = MODE,
            full,
            routes_written = stats.apply.routes_written,
            frontends_written = stats.apply.frontends_written,
            frontends_deleted = stats.apply.frontends_deleted,
            udp_flows_flushed = stats.udp_flushed,
            "eBPF maps synced"
        );
        let repairs = std::mem::take(&mut loaded.hooks.pending);
        Ok(SyncOutcome { full, objects, repairs })
    }

    /// Renders every Service and applies the difference: against the maps
    /// as read back when the request is full (or nothing is cached), else
    /// against what the last sync wrote.
    fn full(
        &self,
        maps: &mut maps::Maps,
        state: &mut ServiceState,
        request: &SyncRequest,
    ) -> Result<SyncStats, EbpfError> {
        let mut desired = render::render(&request.snapshot, &self.opts);
        for skipped in desired.skipped.iter().chain(&desired.unsupported) {
            tracing::warn!(backend = MODE, "{skipped}");
            self.metrics.skipped_frontends.inc();
        }
        let reconcile = request.full || state.cache.is_none();
        // Until this one succeeds, what the maps hold is unknown: the next sync reads them.
        let cached = state.cache.take();
        state.by_service = None;
        let mut current = match cached {
            Some(c) if !reconcile => c,
            _ => maps::Programmed::read(maps)?,
        };
        let totals = maps::needs(&desired);
        self.capacity(maps, &totals)?;
        let stats = maps::apply(maps, &mut current, &desired)?;
        if reconcile {
            let removed = maps::collect_garbage(maps, &current)?;
            if removed > 0 {
                tracing::info!(backend = MODE, removed, "removed backend slots no route points to");
            }
        }
        state.cache = Some(current);
        state.totals = totals;
        state.contested = !desired.skipped.is_empty();
        let by_service: BTreeMap<_, _> = std::mem::take(&mut desired.by_service)
            .into_iter()
            .map(|(n, part)| (n, render::Share::new(part)))
            .collect();
        state.owners =
            by_service.iter().flat_map(|(name, part)| part.frontend_keys().map(move |k| (*k, name.clone()))).collect();
        state.by_service = Some(by_service);
        Ok(SyncStats { apply: stats, udp_flushed: 0 })
    }

    /// Renders and applies only the Services the request names as changed,
    /// touching only their map entries. None when a full sync is needed
    /// instead: nothing cached, cluster CIDRs changed, or a frontend two
    /// Services claim (the full render arbitrates those).
    fn partial(
        &self,
        maps: &mut maps::Maps,
        state: &mut ServiceState,
        request: &SyncRequest,
    ) -> Result<Option<SyncStats>, EbpfError> {
        let (Some(current), Some(index), false) = (state.cache.as_mut(), state.by_service.as_mut(), state.contested)
        else {
            return Ok(None);
        };
        let masq = request.snapshot.masquerade();
        let cidrs: std::collections::BTreeSet<_> =
            masq.cluster_cidrs.iter().map(|n| (render::mapped_prefix(n), layout::Addr::from(n.network()))).collect();
        if cidrs != current.cluster_cidrs {
            return Ok(None);
        }
        let mut parts = Vec::with_capacity(request.changed.len());
        let mut need = state.totals;
        for name in request.changed.iter() {
            let new = match request.snapshot.service(name) {
                Some(service) => render::render_service(service, masq, &self.opts),
                None => render::Desired::default(),
            };
            let claimed = new.frontends.keys().any(|k| state.owners.get(k).is_some_and(|owner| owner != name));
            if claimed || !new.skipped.is_empty() {
                return Ok(None);
            }
            for unsupported in &new.unsupported {
                tracing::warn!(backend = MODE, "{unsupported}");
                self.metrics.skipped_frontends.inc();
            }
            let old = index.get(name).map(render::Share::desired).unwrap_or_default();
            for ((_, n), ((_, minus), (_, plus))) in
                need.iter_mut().zip(maps::needs(&old).iter().zip(maps::needs(&new)))
            {
                *n = (*n + plus).saturating_sub(*minus);
            }
            parts.push((name.clone(), old, new));
        }
        self.capacity(maps, &need)?;
        let mut total = SyncStats::default();
        for (name, old, mut new) in parts {
            let mut share = current.share(&old);
            new.cluster_cidrs = current.cluster_cidrs.clone();
            let stats = match maps::apply(maps, &mut share, &new) {
                Ok(stats) => stats,
                Err(e) => {
                    // Half applied: the next sync reads the maps back.
                    state.cache = None;
                    state.by_service = None;
                    return Err(e);
                }
            };
            current.replace_share(&old, share);
            total.apply.add(&stats);
            for key in old.frontends.keys() {
                if state.owners.get(key) == Some(&name) {
                    state.owners.remove(key);
                }
            }
            state.owners.extend(new.frontends.keys().map(|k| (*k, name.clone())));
            let new = render::Share::new(new);
            if new.is_empty() {
                index.remove(&name);
            } else {
                index.insert(name, new);
            }
        }
        state.totals = need;
        Ok(Some(total))
    }

    fn capacity(&self, maps: &maps::Maps, need: &[(&'static str, usize)]) -> Result<(), EbpfError> {
        maps::check_capacity(maps, need).inspect_err(|e| {
            if let EbpfError::Full { map, .. } = e {
                self.metrics.map_full.get_or_create(&vec![("map".into(), (*map).into())]).inc();
            }
        })
    }
}

/// What one sync wrote.
#[derive(Clone, Copy, Debug, Default)]
struct SyncStats {
    apply: maps::ApplyStats,
    udp_flushed: usize,
}

#[async_trait]
impl Dataplane for EbpfDataplane {
    fn mode(&self) -> &str {
        MODE
    }

    fn capabilities(&self) -> Capabilities {
        use Capability::*;
        let mut caps = vec![
            Tcp,
            Udp,
            // Address translation only: see render (SCTP port translation).
            Sctp,
            IPv4,
            IPv6,
            ClusterIP,
            NodePort,
            ExternalIPs,
            LoadBalancerIPs,
            SessionAffinity,
            ExternalTrafficPolicyLocal,
            // Routes are chosen per source class: pods and the node reach
            // every endpoint of an externalTrafficPolicy Local frontend.
            ExternalTrafficPolicyLocalFromCluster,
            InternalTrafficPolicyLocal,
            // Affinity entries carry their own timeout, checked per packet.
            ShortAffinityTimeouts,
            SourceRanges,
            Reject,
            Masquerade,
            Hairpin,
            StaleUdpConntrack,
        ];
        if self.cfg.cgroup_path.is_some() {
            caps.push(HostNetworkClients);
        }
        Capabilities::new(caps)
    }

    fn limitations(&self) -> Vec<String> {
        if self.cfg.cgroup_path.is_none() { vec![NO_CGROUP_LIMITATION.to_string()] } else { Vec::new() }
    }

    fn health(&self) -> DataplaneHealth {
        self.health.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn sync(&self, request: SyncRequest) -> Result<SyncOutcome, DataplaneError> {
        let job = SyncJob {
            ctx: self.ctx.clone(),
            cfg: self.cfg.clone(),
            loaded: self.loaded.clone(),
            metrics: self.metrics.clone(),
            opts: self.render_options(),
            health: self.health.clone(),
            monitor: self.monitor.clone(),
        };
        let span = tracing::info_span!("sync", backend = MODE, full = request.full, services = request.snapshot.len());
        let _enter = span.enter();
        self.worker
            .run(move || job.run(request))
            .await
            .map_err(|e| DataplaneError::failed(MODE, "enter network namespace", e))?
            .map_err(|e| e.into_dataplane("sync"))
    }

    /// The pinned maps, and the hooks where the kernel shows none of our
    /// programs (`ProgrammedState.unattached`): a fresh process (`switchyard
    /// inspect`) finds our programs by the pinned maps they use.
    async fn inspect(&self) -> Result<ProgrammedState, DataplaneError> {
        let cfg = self.cfg.clone();
        self.worker
            .run(move || inspect::programmed_state(&cfg))
            .await
            .map_err(|e| DataplaneError::failed(MODE, "enter network namespace", e))?
            .map_err(|e| e.into_dataplane("inspect"))
    }

    async fn cleanup(&self) -> Result<(), DataplaneError> {
        // No re-attaching behind cleanup's back.
        drop(self.monitor.lock().unwrap_or_else(|e| e.into_inner()).take());
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = DataplaneHealth::Up;
        let cfg = self.cfg.clone();
        let loaded = self.loaded.clone();
        self.worker
            .run(move || {
                let mut l = loaded.lock().unwrap_or_else(|e| e.into_inner());
                *l = Loaded::default();
                cleanup::cleanup(&cfg)
            })
            .await
            .map_err(|e| DataplaneError::failed(MODE, "enter network namespace", e))?
            .map_err(|e| e.into_dataplane("cleanup"))
    }
}
