//! [`IptablesDataplane`]: the [`Dataplane`] that programs iptables.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use proxy_core::{
    BackendContext, Capabilities, Capability, Dataplane, DataplaneError, FamilySet, IpFamily, MasqueradeConfig,
    NetNamespace, NodePortAddresses, ProgrammedState, ServiceName, Snapshot, SyncOutcome, SyncRequest,
};
use tracing::{debug, info, info_span, warn};

use crate::cleanup;
use crate::config::IptablesConfig;
use crate::drift::Drift;
use crate::error::Error;
use crate::exec::{Executor, SystemExecutor, Variant};
use crate::inspect::{InspectContext, programmed_state};
use crate::metrics::{IptablesMetrics, TableLabel};
use crate::render::{self, RenderConfig, ServiceRules};
use crate::supported;
use crate::sync::{self, Rewrite, Written};
use crate::sysctl::{SysctlError, Sysctls};
use crate::trees::Trees;
use proxy_core::stale::{StaleFlows, stale_udp};
use proxy_core::{KernelWorker, conntrack};

/// The `--proxy-mode` name.
pub const MODE: &str = "iptables";

/// The sysctl localhost node ports need.
const ROUTE_LOCALNET: &str = "net.ipv4.conf.all.route_localnet";

/// How the backend is set up; fixed for its lifetime.
#[derive(Clone, Debug)]
pub struct Settings {
    pub families: FamilySet,
    pub netns: NetNamespace,
    pub masquerade_mark: u32,
    pub localhost_nodeports: bool,
    pub nodeport_addresses: NodePortAddresses,
    pub node_ips: Vec<IpAddr>,
    pub random_fully: bool,
    /// Dispatch-tree shape (see [`crate::tree`]).
    pub stride: u8,
    pub leaf_max: usize,
    /// A full rewrite at least this often, even when partial syncs succeed
    /// (kube-proxy's FullSyncPeriod, one hour).
    pub full_sync_period: Duration,
    /// Delete stale UDP conntrack entries (needs a real kernel).
    pub conntrack: bool,
    /// Set `route_localnet` for localhost node ports (needs a real kernel).
    pub sysctls: bool,
    /// `--cluster-cidr`, for `inspect()` to pick a source outside the cluster.
    pub cluster_cidrs: Vec<ipnet::IpNet>,
}

impl Settings {
    /// Settings for tests and tools: IPv4, kube-proxy's defaults, no kernel side effects.
    pub fn new(netns: NetNamespace) -> Self {
        Settings {
            families: FamilySet::V4,
            netns,
            masquerade_mark: 0x4000,
            localhost_nodeports: true,
            nodeport_addresses: NodePortAddresses::All,
            node_ips: Vec::new(),
            random_fully: true,
            stride: 2,
            leaf_max: 256,
            full_sync_period: Duration::from_secs(3600),
            conntrack: false,
            sysctls: false,
            cluster_cidrs: Vec::new(),
        }
    }

    pub fn render_config(&self, family: IpFamily, masquerade: &MasqueradeConfig) -> RenderConfig {
        RenderConfig {
            family,
            masquerade_mark: self.masquerade_mark,
            masquerade: masquerade.clone(),
            random_fully: self.random_fully,
            localhost_nodeports: self.localhost_nodeports,
            nodeport_addresses: self.nodeport_addresses.clone(),
            node_ips: self.node_ips.iter().copied().filter(|ip| IpFamily::of(ip) == family).collect(),
            stride: self.stride,
            leaf_max: self.leaf_max,
        }
    }
}

/// What one family looks like as far as this process knows.
#[derive(Debug, Default)]
struct FamilyState {
    cfg: Option<RenderConfig>,
    services: BTreeMap<ServiceName, ServiceRules>,
    /// The dispatch trees over `services`, kept up to date by `update_renders`.
    trees: Trees,
    /// (rules, chains) per table (nat, filter) of the Services' own chains,
    /// kept as Services are rendered, so no sync has to count them all.
    own_counts: [(usize, usize); 2],
    written: Written,
}

/// The Services a sync re-rendered, with their previous renders (`None`: new).
type Touched = Vec<(ServiceName, Option<ServiceRules>)>;

/// How much a sync does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Reads the kernel and rewrites every chain (first sync, after a
    /// failure or a lost canary, and at least every `full_sync_period`).
    Rewrite,
    /// A full request: reads the kernel (unless nf_tables' generation proves
    /// nobody changed it) and rewrites only what differs from the desired
    /// state, reporting what someone else changed as repairs.
    Witness,
    /// Only the chains the plans changed, against what this process wrote;
    /// re-adding the canary catches a flushed table.
    Partial,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Rewrite => "rewrite",
            Mode::Witness => "witness",
            Mode::Partial => "partial",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    families: BTreeMap<IpFamily, FamilyState>,
    /// The kernel may differ from `written`: the next sync must be a full rewrite.
    needs_full: bool,
    last_full: Option<Instant>,
    /// Conntrack work of syncs whose restore failed, retried after the next success.
    pending_conntrack: BTreeMap<IpFamily, Vec<StaleFlows>>,
    localnet_set: bool,
    /// nf_tables' generation right after our last commit, when the kernel
    /// was known to hold exactly `written` then: while it is unchanged, a
    /// full sync needs no read.
    trusted_generation: Option<u32>,
}

/// The iptables dataplane. Cloning gives another handle to the same state.
#[derive(Debug, Clone)]
pub struct IptablesDataplane {
    settings: Arc<Settings>,
    exec: Arc<dyn Executor>,
    /// Other implementations that may hold our leftovers (cleaned on full syncs).
    others: Arc<Vec<Arc<dyn Executor>>>,
    state: Arc<Mutex<State>>,
    /// Where the Dataplane methods' blocking work runs (inside the
    /// backend's namespace, one job at a time).
    worker: Arc<KernelWorker>,
    variant: Variant,
    metrics: Option<IptablesMetrics>,
}

impl IptablesDataplane {
    /// A dataplane over any executor (the real binaries, or [`crate::fake::FakeIptables`]).
    pub fn with_executor(settings: Settings, exec: Arc<dyn Executor>) -> Self {
        let worker = Arc::new(KernelWorker::new("swy-iptables", settings.netns.clone()));
        IptablesDataplane {
            settings: Arc::new(settings),
            exec,
            others: Arc::new(Vec::new()),
            state: Arc::new(Mutex::new(State::default())),
            worker,
            variant: Variant::Plain,
            metrics: None,
        }
    }

    /// Registers kube-proxy's iptables metrics in `registry` and keeps them current.
    pub fn with_metrics(mut self, registry: &mut prometheus_client::registry::Registry) -> Self {
        self.metrics = Some(IptablesMetrics::register(registry));
        self
    }

    /// Builds from the backend context: reads the section, detects the
    /// iptables implementation, checks `--random-fully`. Changes nothing.
    pub fn from_context(ctx: &BackendContext) -> Result<Self, DataplaneError> {
        let cfg = IptablesConfig::from_section(&ctx.section)
            .map_err(|problems| DataplaneError::Config { mode: MODE.into(), problems })?;
        let families: Vec<IpFamily> = ctx.families.iter().collect();
        let variant = match cfg.variant.fixed() {
            Some(v) => v,
            None => supported::detect(&ctx.netns, &families)
                .map_err(|e| DataplaneError::unavailable(MODE, e.to_string()))?,
        };
        if !families.iter().all(|f| supported::has_variant(variant, *f)) {
            return Err(DataplaneError::unavailable(
                MODE,
                format!("iptables-{variant} restore/save binaries are missing"),
            ));
        }
        let mut settings = Settings::new(ctx.netns.clone());
        settings.families = ctx.families;
        settings.masquerade_mark = cfg.masquerade_mark();
        settings.localhost_nodeports = cfg.localhost_node_ports;
        settings.nodeport_addresses = ctx.nodeport_addresses.clone();
        settings.node_ips = ctx.node_ips.clone();
        settings.random_fully = supported::random_fully(&ctx.netns, variant);
        settings.conntrack = true;
        settings.sysctls = true;
        let exec: Arc<dyn Executor> = Arc::new(SystemExecutor { netns: ctx.netns.clone(), variant });
        settings.cluster_cidrs = ctx.masquerade.cluster_cidrs.clone();
        let random_fully = settings.random_fully;
        let mut dp = IptablesDataplane::with_executor(settings, exec);
        let mut others: Vec<Arc<dyn Executor>> = Vec::new();
        for other in [Variant::Nft, Variant::Legacy].into_iter().filter(|v| *v != variant && variant != Variant::Plain)
        {
            if families.iter().all(|f| supported::has_variant(other, *f)) {
                others.push(Arc::new(SystemExecutor { netns: ctx.netns.clone(), variant: other }));
            }
        }
        dp.others = Arc::new(others);
        dp.variant = variant;
        dp.metrics = Some(IptablesMetrics::register(&mut ctx.metrics.lock().unwrap_or_else(|e| e.into_inner())));
        info!(%variant, random_fully, "iptables backend ready");
        Ok(dp)
    }

    /// The iptables implementation in use.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.exec
    }

    fn families(&self) -> Vec<IpFamily> {
        self.settings.families.iter().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what this process wrote: the next sync is a full rewrite.
    pub fn force_full_sync(&self) {
        self.lock().needs_full = true;
    }

    /// The sync, blocking. Public for benchmarks and tools that have no runtime.
    pub fn sync_blocking(&self, request: &SyncRequest) -> Result<SyncOutcome, Error> {
        let mut state = self.lock();
        let rewrite = state.needs_full
            || state.last_full.is_none_or(|t| request.full && t.elapsed() >= self.settings.full_sync_period);
        let mode = match (rewrite, request.full) {
            (true, _) => Mode::Rewrite,
            (false, true) => Mode::Witness,
            (false, false) => Mode::Partial,
        };
        let span = info_span!(
            "sync",
            backend = MODE,
            full = request.full,
            mode = mode.as_str(),
            services = request.snapshot.len(),
            changed = request.changed.len()
        );
        let _enter = span.enter();
        let result = match self.sync_locked(&mut state, request, mode) {
            Ok(outcome) => Ok(outcome),
            Err(e) if mode != Mode::Rewrite => {
                warn!(error = %proxy_core::ErrorChain(&e), "{} sync failed; doing a full sync", mode.as_str());
                if let Some(m) = &self.metrics {
                    m.partial_restore_failures.inc();
                }
                state.needs_full = true;
                self.sync_locked(&mut state, request, Mode::Rewrite)
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            state.needs_full = true;
            state.trusted_generation = None;
            if let Some(m) = &self.metrics {
                m.restore_failures.inc();
            }
        }
        if let (Ok(outcome), Some(m)) = (&result, &self.metrics) {
            for (table, key) in [("nat", "nat rules"), ("filter", "filter rules")] {
                let n = outcome.objects.get(key).copied().unwrap_or(0);
                m.rules.get_or_create(&TableLabel { table: table.into() }).set(n as i64);
            }
        }
        result
    }

    fn sync_locked(&self, state: &mut State, request: &SyncRequest, mode: Mode) -> Result<SyncOutcome, Error> {
        let snapshot = &request.snapshot;
        let mut outcome = SyncOutcome { full: mode != Mode::Partial, ..Default::default() };
        let mut conntrack_work: BTreeMap<IpFamily, Vec<StaleFlows>> = std::mem::take(&mut state.pending_conntrack);
        let families = self.families();
        // The kernel is the witness of a full sync; nf_tables' generation
        // says cheaply whether anyone changed anything since our last commit
        // (see `crate::generation`). When it did, or there is none, read.
        let generation_before = self.exec.generation();
        let untouched = generation_before.is_some() && state.trusted_generation == generation_before;
        let read = match mode {
            Mode::Rewrite => true,
            Mode::Witness => !untouched,
            Mode::Partial => false,
        };
        let mut commits: u32 = 0;
        let mut result = Ok(());
        for family in &families {
            let family = *family;
            let cfg = self.settings.render_config(family, snapshot.masquerade());
            let fs = state.families.entry(family).or_default();
            let config_changed = fs.cfg.as_ref() != Some(&cfg);
            let (work, touched) = update_renders(fs, snapshot, request, &cfg, mode == Mode::Rewrite);
            conntrack_work.entry(family).or_default().extend(work);
            // Checked (one read) on every full request: someone resetting it
            // breaks localhost node ports as surely as a deleted rule.
            if self.settings.sysctls
                && family == IpFamily::V4
                && cfg.localhost_nodeports_active()
                && (mode != Mode::Partial || !state.localnet_set)
            {
                if self.set_route_localnet() && state.localnet_set {
                    warn!(sysctl = ROUTE_LOCALNET, "sysctl reset by someone else; set again");
                    outcome.repaired(crate::drift::kind::SYSCTL, 1);
                }
                state.localnet_set = true;
            }
            let fs = state.families.entry(family).or_default();
            let refreshed = fs.trees.refresh(&cfg, &fs.services);
            let counts = family_counts(&cfg, fs);
            for (key, n) in [("nat rules", counts[0].0), ("filter rules", counts[1].0)] {
                *outcome.objects.entry(key.to_string()).or_insert(0) += n as u64;
            }
            *outcome.objects.entry("chains".to_string()).or_insert(0) += (counts[0].1 + counts[1].1) as u64;
            let started = Instant::now();
            if mode == Mode::Partial && !config_changed {
                // Only what the changed Services touched: their own chains
                // and the tree chains that hold their entries.
                let mut candidates = Vec::new();
                let mut gone = Vec::new();
                for (name, old) in &touched {
                    let new = fs.services.get(name);
                    candidates.extend(new.into_iter().flat_map(ServiceRules::desired_chains));
                    for c in old.iter().flat_map(|o| &o.chains) {
                        if !new.is_some_and(|n| n.chains.iter().any(|x| x.table == c.table && x.name == c.name)) {
                            gone.push((c.table, c.name.clone()));
                        }
                    }
                }
                fs.trees.changed(&refreshed, &fs.services, &fs.written, &mut candidates, &mut gone);
                let (payload, stats) = sync::partial_payload_of(&fs.written, &candidates, &gone, false);
                let planned = started.elapsed();
                if !payload.is_empty() {
                    commits = commits.wrapping_add(payload.table_count() as u32);
                    if let Err(e) = self.exec.restore_from(family, &payload) {
                        result = Err(e);
                        break;
                    }
                    debug!(ip_family = %family, mode = mode.as_str(), chains_written = stats.chains_written, chains_deleted = stats.chains_deleted,
                        rules_written = stats.rules_written, plan_ms = planned.as_millis() as u64,
                        restore_ms = (started.elapsed() - planned).as_millis() as u64, "restored");
                }
                drop(payload);
                sync::record_partial(&mut fs.written, &candidates, &gone);
                continue;
            }
            let desired = render::desired(&cfg, &fs.services, &fs.trees);
            let (payload, stats, drift) = if read {
                // What iptables-save shows plans the payload and is compared
                // with what we wrote: one read per family and table.
                let current = match cleanup::read(self.exec.as_ref(), family) {
                    Ok(c) => c,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                let rewrite = if mode == Mode::Rewrite { Rewrite::All } else { Rewrite::Differing };
                sync::reconcile_payload(&current, &desired, &fs.written, rewrite)
            } else {
                let (p, s) = sync::partial_payload(&fs.written, &desired, false);
                (p, s, Drift::default())
            };
            let planned = started.elapsed();
            if !drift.is_empty() {
                drift.log(family);
                drift.record(&mut outcome);
                // Flows that met the broken rules may hold conntrack entries
                // that were never DNATed, or DNATed elsewhere: check them all,
                // as a full sync does.
                let all = fs.services.values().flat_map(|s| stale_udp(family, Some(&s.plan), Some(&s.plan), true));
                conntrack_work.entry(family).or_default().extend(all);
            }
            if payload.is_empty() {
                // The kernel already holds every desired chain as desired.
                fs.written = sync::written(&desired);
                continue;
            }
            commits = commits.wrapping_add(payload.table_count() as u32);
            // Streamed into iptables-restore: rendering overlaps the restore.
            if let Err(e) = self.exec.restore_from(family, &payload) {
                result = Err(e);
                break;
            }
            drop(payload);
            debug!(ip_family = %family, mode = mode.as_str(), chains_written = stats.chains_written, chains_deleted = stats.chains_deleted,
                rules_written = stats.rules_written, plan_ms = planned.as_millis() as u64,
                restore_ms = (started.elapsed() - planned).as_millis() as u64, "restored");
            fs.written = sync::written(&desired);
        }
        if let Err(e) = result {
            state.pending_conntrack = conntrack_work;
            state.trusted_generation = None;
            return Err(e);
        }
        // Trust the generation only if the kernel was known to hold what we
        // wrote (read now, or trusted before) and only our own commits moved
        // it: anyone else's commit in between makes the next full sync read.
        let generation_after = self.exec.generation();
        state.trusted_generation = match (generation_before, generation_after) {
            (Some(before), Some(after)) if (read || untouched) && after == before.wrapping_add(commits) => Some(after),
            _ => None,
        };
        if mode == Mode::Rewrite {
            state.needs_full = false;
            state.last_full = Some(Instant::now());
            self.clean_elsewhere(&families);
        }
        if self.settings.conntrack {
            for (family, work) in conntrack_work {
                if work.is_empty() {
                    continue;
                }
                match conntrack::clear_stale_udp(&self.settings.netns, family, work) {
                    Ok(n) if n > 0 => debug!(ip_family = %family, deleted = n, "stale UDP conntrack entries deleted"),
                    Ok(_) => {}
                    Err(e) => {
                        warn!(ip_family = %family, error = %proxy_core::ErrorChain(&e), "clearing stale UDP conntrack entries failed")
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// Our leftovers in families we do not serve and in the other iptables implementation.
    fn clean_elsewhere(&self, families: &[IpFamily]) {
        for family in IpFamily::ALL.into_iter().filter(|f| !families.contains(f)) {
            if let Err(e) = cleanup::cleanup_family(self.exec.as_ref(), family) {
                debug!(ip_family = %family, error = %e, "no cleanup of an unserved family");
            }
        }
        for other in self.others.iter() {
            for family in IpFamily::ALL {
                match cleanup::cleanup_family(other.as_ref(), family) {
                    Ok(n) if n > 0 => {
                        info!(ip_family = %family, chains = n, "removed our chains from the other iptables implementation")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(ip_family = %family, error = %e, "cleanup of the other iptables implementation failed")
                    }
                }
            }
        }
    }

    /// `sysctl -w net.ipv4.conf.all.route_localnet=1`, inside our namespace,
    /// so that DNAT from 127.0.0.1 to a pod is routed (localhost node ports).
    /// The value found is recorded for cleanup (see [`crate::sysctl`]).
    /// Returns whether it changed the value.
    fn set_route_localnet(&self) -> bool {
        let r = self.settings.netns.run(|| Sysctls::new(MODE).set(ROUTE_LOCALNET, "1"));
        match r {
            Ok(Ok(changed)) => changed,
            Ok(Err(e)) => {
                warn!(error = %proxy_core::ErrorChain(&e), "localhost node ports will not work");
                false
            }
            Err(e) => {
                warn!(error = %e, sysctl = ROUTE_LOCALNET, "cannot enter the network namespace; localhost node ports will not work");
                false
            }
        }
    }

    /// The sysctls this mode writes, set now (`--init-only`): `route_localnet`
    /// when localhost node ports are served. Unlike a sync, a failure is an
    /// error: a privileged init step that cannot write them has failed.
    pub fn init_sysctls(&self) -> Result<(), DataplaneError> {
        let cfg = self.settings.render_config(IpFamily::V4, &MasqueradeConfig::default());
        if !(self.settings.sysctls && self.families().contains(&IpFamily::V4) && cfg.localhost_nodeports_active()) {
            return Ok(());
        }
        let set = self.settings.netns.run(|| Sysctls::new(MODE).set(ROUTE_LOCALNET, "1"));
        match set.map_err(|e| DataplaneError::failed(MODE, "enter the network namespace", e))? {
            Ok(changed) => {
                info!(sysctl = ROUTE_LOCALNET, changed, "set for localhost node ports");
                Ok(())
            }
            Err(e) => Err(DataplaneError::failed(MODE, "init", e)),
        }
    }

    /// Reads the kernel back, blocking.
    pub fn inspect_blocking(&self) -> Result<ProgrammedState, Error> {
        let mut out = ProgrammedState::default();
        for family in self.families() {
            let rs = cleanup::read(self.exec.as_ref(), family)?;
            let ctx = InspectContext {
                family,
                cluster_cidrs: self.settings.cluster_cidrs.clone(),
                node_ips: self.settings.node_ips.clone(),
                nodeport_addresses: self.settings.nodeport_addresses.clone(),
            };
            out.frontends.extend(programmed_state(&rs, &ctx)?.frontends);
        }
        Ok(out)
    }

    /// Removes everything we own, blocking.
    pub fn cleanup_blocking(&self) -> Result<(), Error> {
        let mut state = self.lock();
        for family in IpFamily::ALL {
            let r = cleanup::cleanup_family(self.exec.as_ref(), family);
            // A family whose binary or kernel support is missing has nothing of ours.
            if let Err(e) = r {
                if self.settings.families.contains(family) {
                    return Err(e);
                }
                debug!(ip_family = %family, error = %e, "skipped cleanup");
            }
        }
        for other in self.others.iter() {
            for family in IpFamily::ALL {
                if let Err(e) = cleanup::cleanup_family(other.as_ref(), family) {
                    debug!(ip_family = %family, error = %e, "skipped cleanup of the other iptables implementation");
                }
            }
        }
        // The martian guard is gone with our chains: route_localnet goes
        // back to what it was, if we changed it.
        if self.settings.sysctls {
            self.settings.netns.run(|| Sysctls::new(MODE).restore()).map_err(|source| {
                Error::Sysctl(SysctlError {
                    name: ROUTE_LOCALNET.into(),
                    operation: "enter the network namespace of",
                    source,
                })
            })??;
        }
        *state = State::default();
        Ok(())
    }
}

/// (rules, chains) per table (nat, filter) of everything we own in a family.
fn family_counts(cfg: &RenderConfig, fs: &FamilyState) -> [(usize, usize); 2] {
    let mut out = render::static_counts(cfg);
    for part in [fs.own_counts, fs.trees.counts()] {
        for (o, p) in out.iter_mut().zip(part) {
            o.0 += p.0;
            o.1 += p.1;
        }
    }
    out
}

/// Re-renders the Services that need it, keeping the trees and counts up
/// to date; returns the conntrack work and the Services re-rendered.
fn update_renders(
    fs: &mut FamilyState,
    snapshot: &Snapshot,
    request: &SyncRequest,
    cfg: &RenderConfig,
    full: bool,
) -> (Vec<StaleFlows>, Touched) {
    let family = cfg.family;
    let mut work = Vec::new();
    let mut touched = Vec::new();
    let config_changed = fs.cfg.as_ref() != Some(cfg);
    if config_changed {
        fs.cfg = Some(cfg.clone());
        // Tree shapes depend on the configuration (family, leaf size).
        fs.trees = Trees::default();
    }
    let everything = full || request.full || config_changed;
    let candidates: Vec<ServiceName> = if everything {
        let mut all: BTreeSet<ServiceName> = snapshot.services().map(|p| p.name().clone()).collect();
        all.extend(fs.services.keys().cloned());
        all.into_iter().collect()
    } else {
        request.changed.iter().cloned().collect()
    };
    for name in candidates {
        let new = snapshot.service(&name);
        let old = fs.services.get(&name);
        let unchanged = proxy_core::ServicePlan::unchanged(old.map(|o| &o.plan), new);
        if unchanged && !config_changed {
            if full {
                work.extend(stale_udp(family, new.map(|p| &**p), new.map(|p| &**p), true));
            }
            continue;
        }
        work.extend(stale_udp(family, old.map(|o| &*o.plan), new.map(|p| &**p), full));
        let old = match new {
            Some(plan) => fs.services.insert(name.clone(), render::render_service(plan, cfg)),
            None => fs.services.remove(&name),
        };
        let new = fs.services.get(&name);
        fs.trees.update(&name, old.as_ref(), new);
        for (rules, sign) in [(old.as_ref(), false), (new, true)] {
            for (o, c) in fs.own_counts.iter_mut().zip(rules.map(ServiceRules::own_counts).unwrap_or_default()) {
                if sign {
                    o.0 += c.0;
                    o.1 += c.1;
                } else {
                    o.0 -= c.0;
                    o.1 -= c.1;
                }
            }
        }
        touched.push((name, old));
    }
    (work, touched)
}

#[async_trait]
impl Dataplane for IptablesDataplane {
    fn mode(&self) -> &str {
        MODE
    }

    fn capabilities(&self) -> Capabilities {
        use Capability::*;
        let mut caps = Capabilities::new([
            Tcp,
            Udp,
            Sctp,
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
            StaleUdpConntrack,
            HostNetworkClients,
            ExternalTrafficPolicyLocalFromCluster,
            ShortAffinityTimeouts,
        ]);
        if self.settings.families.ipv4 {
            caps.0.insert(IPv4);
        }
        if self.settings.families.ipv6 {
            caps.0.insert(IPv6);
        }
        caps
    }

    async fn sync(&self, request: SyncRequest) -> Result<SyncOutcome, DataplaneError> {
        let this = self.clone();
        self.worker
            .run(move || this.sync_blocking(&request))
            .await
            .map_err(|e| DataplaneError::failed(MODE, "sync", e))?
            .map_err(|e| DataplaneError::failed(MODE, "sync", e))
    }

    async fn inspect(&self) -> Result<ProgrammedState, DataplaneError> {
        let this = self.clone();
        self.worker
            .run(move || this.inspect_blocking())
            .await
            .map_err(|e| DataplaneError::failed(MODE, "inspect", e))?
            .map_err(|e| DataplaneError::failed(MODE, "inspect", e))
    }

    async fn cleanup(&self) -> Result<(), DataplaneError> {
        let this = self.clone();
        self.worker
            .run(move || this.cleanup_blocking())
            .await
            .map_err(|e| DataplaneError::failed(MODE, "cleanup", e))?
            .map_err(|e| DataplaneError::failed(MODE, "cleanup", e))
    }
}
