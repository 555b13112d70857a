//! [`NftablesDataplane`]: the [`Dataplane`] that programs nf_tables.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use proxy_core::conntrack::{self, StaleFlows};
use proxy_core::{
    BackendContext, Capabilities, Dataplane, DataplaneError, FamilySet, IpFamily, NetNamespace, NodePortAddresses,
    ProgrammedState, ServiceName, ServicePlan, Snapshot, SyncOutcome, SyncRequest,
};
use tracing::{debug, info, info_span, warn};

use crate::client::{Kernel, SystemKernel, Transaction};
use crate::config::NftablesConfig;
use crate::decide;
use crate::error::Error;
use crate::inspect;
use crate::netlink::nft::Batch;
use crate::netlink::{Elem, ElemData, SetSpec};
use crate::render::{self, Behaviour, Chain, PortObjects, RenderConfig, SERVICE_SETS, Skeleton, TABLE, sets};

/// The `--proxy-mode` name.
pub const MODE: &str = "nftables";

/// How the backend is set up; fixed for its lifetime.
#[derive(Clone, Debug)]
pub struct Settings {
    pub families: FamilySet,
    pub netns: NetNamespace,
    pub masquerade_mark: u32,
    pub nodeport_addresses: NodePortAddresses,
    pub node_ips: Vec<IpAddr>,
    /// Delete stale UDP conntrack entries (needs a real kernel).
    pub conntrack: bool,
}

impl Settings {
    pub fn new(netns: NetNamespace) -> Self {
        Settings {
            families: FamilySet::V4,
            netns,
            masquerade_mark: 0x4000,
            nodeport_addresses: NodePortAddresses::All,
            node_ips: Vec::new(),
            conntrack: true,
        }
    }

    fn render_config(&self, family: IpFamily, snapshot: &Snapshot) -> RenderConfig {
        RenderConfig {
            family,
            masquerade_mark: self.masquerade_mark,
            masquerade: snapshot.masquerade().clone(),
            nodeport_addresses: self.nodeport_addresses.clone(),
            node_ips: self.node_ips.iter().copied().filter(|ip| IpFamily::of(ip) == family).collect(),
        }
    }
}

type ElemKey = (&'static str, Vec<u8>);

/// What one Service renders to in one family.
#[derive(Clone, Debug)]
struct ServiceEntry {
    plan: Arc<ServicePlan>,
    objects: PortObjects,
}

/// One family as this process last wrote it.
#[derive(Debug, Default)]
struct FamilyState {
    cfg: Option<RenderConfig>,
    services: BTreeMap<ServiceName, ServiceEntry>,
    /// Who contributes each element; the smallest Service name wins a conflict.
    /// (A sorted small vector, not a map: almost every key has one owner,
    /// and a map's first node costs about 1 KB per element at 150,000 elements.)
    owners: HashMap<ElemKey, Vec<(ServiceName, Elem)>>,
    /// Per-Service chains (firewall), by name.
    chains: BTreeMap<String, (ServiceName, Chain)>,
    behaviours: BTreeMap<Behaviour, usize>,
    /// The skeleton in the kernel, and the behaviours it was built for.
    skeleton: Option<Skeleton>,
    written_behaviours: BTreeSet<Behaviour>,
    /// Elements per Service set (effective keys), kept as Services change.
    counts: BTreeMap<&'static str, usize>,
    /// The size each Service set was created with at the last full rewrite.
    sizes: BTreeMap<&'static str, u32>,
}

impl FamilyState {
    fn effective(&self, key: &ElemKey) -> Option<&Elem> {
        self.owners.get(key).and_then(|m| m.first()).map(|(_, e)| e)
    }

    /// Replaces one Service's contribution; records the element keys it
    /// touched in `touched` (`None`: a full rewrite, which needs no record).
    fn set_service(
        &mut self,
        name: &ServiceName,
        entry: Option<ServiceEntry>,
        mut touched: Option<&mut BTreeSet<ElemKey>>,
    ) {
        if let Some(old) = self.services.remove(name) {
            for (set, e) in &old.objects.elements {
                let k = owner_key(set, e);
                if let Some(m) = self.owners.get_mut(&k) {
                    m.retain(|(n, _)| n != name);
                    if m.is_empty() {
                        self.owners.remove(&k);
                        if let Some(c) = self.counts.get_mut(set) {
                            *c = c.saturating_sub(1);
                        }
                    }
                }
                if let Some(t) = touched.as_deref_mut() {
                    t.insert(k);
                }
            }
            for c in &old.objects.chains {
                self.chains.remove(&c.name);
            }
            for b in &old.objects.behaviours {
                dec(&mut self.behaviours, *b);
            }
        }
        if let Some(new) = entry {
            for (set, e) in &new.objects.elements {
                let k = owner_key(set, e);
                if let Some(t) = touched.as_deref_mut() {
                    t.insert(k.clone());
                }
                let owners = self.owners.entry(k).or_default();
                if owners.is_empty() {
                    *self.counts.entry(set).or_insert(0) += 1;
                }
                let at = owners.partition_point(|(n, _)| n < name);
                owners.insert(at, (name.clone(), e.clone()));
            }
            for c in &new.objects.chains {
                self.chains.insert(c.name.clone(), (name.clone(), c.clone()));
            }
            for b in &new.objects.behaviours {
                *self.behaviours.entry(*b).or_insert(0) += 1;
            }
            self.services.insert(name.clone(), new);
        }
    }
}

impl FamilyState {
    /// The size to create each Service set with: twice its elements, at
    /// least `MIN_SET_SIZE`. A size makes the kernel pick its fixed-size
    /// hash over the resizable rhashtable, which loads about twice as fast
    /// (`benches/kernel_cost.rs`: 100,000 elements in 190 ms instead of
    /// 390-560 ms); but it is also a limit (`ENFILE` beyond it), so a
    /// partial sync that would pass it is made a full rewrite instead
    /// ([`FamilyState::outgrown`]), which sizes the sets anew.
    fn set_sizes(&self) -> BTreeMap<&'static str, u32> {
        SERVICE_SETS
            .iter()
            .map(|set| {
                let n = self.counts.get(set).copied().unwrap_or(0);
                (*set, u32::try_from(n.saturating_mul(2)).unwrap_or(u32::MAX).max(MIN_SET_SIZE))
            })
            .collect()
    }

    /// Whether a Service set holds more elements than it was created for.
    fn outgrown(&self) -> bool {
        self.counts.iter().any(|(set, n)| self.sizes.get(set).is_some_and(|size| *n > *size as usize))
    }
}

/// The smallest size a Service set is created with (a fixed hash of this
/// size takes about 11 KiB of buckets).
const MIN_SET_SIZE: u32 = 1024;

/// Whose element an element is: its key, except that a frontend is one
/// element per class whatever its behaviour (the first part of its key),
/// so that two Services claiming one frontend conflict as with any other
/// key, and a changed behaviour is a changed element.
fn owner_key(set: &'static str, e: &Elem) -> ElemKey {
    match render::parse_frontend_key(&e.key).filter(|_| set == sets::FRONTENDS) {
        Some((b, dest)) => {
            let mut k = b.class.to_ne_bytes().to_vec();
            k.extend_from_slice(dest);
            (set, k)
        }
        None => (set, e.key.clone()),
    }
}

fn dec(m: &mut BTreeMap<Behaviour, usize>, k: Behaviour) {
    if let Some(c) = m.get_mut(&k) {
        *c -= 1;
        if *c == 0 {
            m.remove(&k);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    families: BTreeMap<IpFamily, FamilyState>,
    /// The kernel may differ from what we wrote: the next sync rewrites.
    needs_full: bool,
    /// The generation right after our last commit.
    trusted_generation: Option<u32>,
    pending_conntrack: BTreeMap<IpFamily, Vec<StaleFlows>>,
    /// Repairs made on nf_tables events since the last sync, reported with it.
    pending_repairs: BTreeMap<String, u64>,
}

/// switchyard's nftables dataplane.
#[derive(Debug, Clone)]
pub struct NftablesDataplane {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    kernel: Arc<dyn Kernel>,
    state: Mutex<State>,
    /// The last ruleset generation the event monitor has handled
    /// (`NO_GENERATION` before the first).
    monitor_generation: AtomicU64,
}

const NO_GENERATION: u64 = u64::MAX;

fn families(f: FamilySet) -> Vec<IpFamily> {
    f.iter().collect()
}

impl NftablesDataplane {
    pub fn new(settings: Settings, kernel: Arc<dyn Kernel>) -> Self {
        let state = Mutex::new(State { needs_full: true, ..State::default() });
        let monitor_generation = AtomicU64::new(NO_GENERATION);
        NftablesDataplane { inner: Arc::new(Inner { settings, kernel, state, monitor_generation }) }
    }

    /// The real backend for a daemon's context.
    pub fn from_context(ctx: &BackendContext) -> Result<Self, DataplaneError> {
        let cfg = NftablesConfig::from_section(&ctx.section)
            .map_err(|problems| DataplaneError::Config { mode: MODE.into(), problems })?;
        let settings = Settings {
            families: ctx.families,
            netns: ctx.netns.clone(),
            masquerade_mark: 1u32 << cfg.masquerade_bit,
            nodeport_addresses: ctx.nodeport_addresses.clone(),
            node_ips: ctx.node_ips.clone(),
            conntrack: true,
        };
        let kernel = Arc::new(SystemKernel::new(ctx.netns.clone()));
        let dp = NftablesDataplane::new(settings, kernel);
        dp.watch();
        Ok(dp)
    }

    /// Starts the event-driven repair: a thread subscribed to nf_tables
    /// events in the backend's namespace, which rewrites our table as soon
    /// as someone else changes it (instead of at the next periodic sync).
    /// It ends when the dataplane is dropped.
    /// Returns once the monitor is subscribed (or has failed, which it
    /// logs): a change made after this call is seen.
    pub fn watch(&self) {
        let weak = Arc::downgrade(&self.inner);
        let netns = self.inner.settings.netns.clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new().name("nft-monitor".into()).spawn(move || {
            let subscribed = || {
                let _ = tx.send(());
            };
            let alive = || weak.strong_count() > 0;
            let on_change = |change: crate::monitor::Change| {
                if let Some(inner) = weak.upgrade() {
                    inner.repair(&change);
                }
            };
            let handled = |generation: u32| {
                if let Some(inner) = weak.upgrade() {
                    inner.monitor_generation.store(u64::from(generation), Ordering::Release);
                }
            };
            if let Err(e) = crate::monitor::run(&netns, &subscribed, &alive, &on_change, &handled) {
                warn!(error = %e, "nf_tables event monitor stopped; changes by others are repaired at the next periodic sync");
            }
        });
        match spawned {
            // Either the subscription or the thread's end (the sender dropped).
            Ok(_) => drop(rx.recv()),
            Err(e) => warn!(error = %e, "nf_tables event monitor not started"),
        }
    }

    /// The last ruleset generation the event monitor has handled (repaired
    /// if it was someone else's change to our table); `None` before the
    /// first or without [`NftablesDataplane::watch`].
    pub fn monitor_generation(&self) -> Option<u32> {
        match self.inner.monitor_generation.load(Ordering::Acquire) {
            NO_GENERATION => None,
            g => Some(g as u32),
        }
    }

    pub fn kernel(&self) -> &Arc<dyn Kernel> {
        &self.inner.kernel
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Makes the next full request read the kernel back (after the kernel
    /// told us someone changed our table).
    pub fn mark_dirty(&self) {
        if let Ok(mut s) = self.inner.state.lock() {
            s.trusted_generation = None;
        }
    }
}

impl Inner {
    /// Rewrites our table after someone else changed it (see [`crate::monitor`]).
    fn repair(&self, change: &crate::monitor::Change) {
        let started = std::time::Instant::now();
        if change.port.is_some_and(|p| self.kernel.commits_from(p)) {
            return; // our own commit
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if change.generation.is_some() && change.generation == state.trusted_generation {
            return; // our own commit, through a kernel that cannot say so by port
        }
        if state.families.values().all(|fs| fs.skeleton.is_none()) {
            return; // nothing written (yet, or cleaned up)
        }
        let kinds = &change.kinds;
        let mut seq = 1;
        for fs in state.families.values_mut() {
            fs.sizes.clear();
        }
        for (family, fs) in state.families.iter_mut() {
            let Some(skel) = &fs.skeleton else { continue };
            let mut b = Batch::new(render::nfproto(*family), seq);
            let sizes = write_full(&mut b, fs, skel);
            seq = seq.wrapping_add(b.messages() as u32 + 2);
            if let Err(e) = self.kernel.apply(&Transaction::from_batch(b)) {
                warn!(error = %proxy_core::ErrorChain(&e), "repair of our nf_tables table failed; the next sync rewrites it");
                state.needs_full = true;
                return;
            }
            fs.sizes = sizes;
        }
        state.trusted_generation = self.kernel.generation().ok();
        for (k, n) in kinds {
            *state.pending_repairs.entry(k.clone()).or_insert(0) += n;
        }
        warn!(
            process = change.process.as_deref().unwrap_or("unknown"),
            pid = change.pid.unwrap_or(0),
            generation = change.generation.unwrap_or(0),
            changes = ?change.what,
            repair_ms = started.elapsed().as_secs_f64() * 1000.0,
            "someone else changed our nf_tables table; rewritten at once"
        );
    }

    fn sync_blocking(&self, request: &SyncRequest) -> Result<SyncOutcome, Error> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = &request.snapshot;
        let mut outcome = SyncOutcome::default();
        for (kind, n) in std::mem::take(&mut state.pending_repairs) {
            outcome.repaired(kind, n);
        }
        // A full request takes the kernel as witness: when the generation is
        // still the one after our own last commit, nobody changed anything
        // and the request is computed as differences; otherwise our table is
        // read back, and anything that differs is rewritten.
        let mut rewrite = state.needs_full;
        if request.full && !rewrite {
            let gen_now = self.kernel.generation().ok();
            if gen_now.is_none() || gen_now != state.trusted_generation {
                let drift = self.witness(&state)?;
                if !drift.is_empty() {
                    for (kind, n) in &drift {
                        outcome.repaired(kind.clone(), *n);
                    }
                    warn!(repairs = ?drift, "our nf_tables objects differ from what we wrote (changed by someone else); rewriting them");
                    rewrite = true;
                }
            }
        }
        let mut conntrack_work: BTreeMap<IpFamily, Vec<StaleFlows>> = std::mem::take(&mut state.pending_conntrack);
        let mut batches: Vec<(IpFamily, Batch)> = Vec::new();
        let mut affinity_families: BTreeSet<IpFamily> = BTreeSet::new();
        let everything = rewrite || request.full;
        let mut seq = 1u32;
        for family in families(self.settings.families) {
            let cfg = self.settings.render_config(family, snapshot);
            let fs = state.families.entry(family).or_default();
            let config_changed = fs.cfg.as_ref() != Some(&cfg);
            if config_changed {
                // New addresses, CIDRs or mark: every element may change.
                *fs = FamilyState::default();
                fs.cfg = Some(cfg.clone());
                rewrite = true;
            }
            let names: Vec<ServiceName> = if everything || config_changed {
                let mut all: BTreeSet<ServiceName> = snapshot.services().map(|p| p.name().clone()).collect();
                all.extend(fs.services.keys().cloned());
                all.into_iter().collect()
            } else {
                request.changed.iter().cloned().collect()
            };
            let mut touched = BTreeSet::new();
            let mut before: HashMap<ElemKey, Option<Elem>> = HashMap::new();
            let mut before_chains: BTreeMap<String, Option<Chain>> = BTreeMap::new();
            let work = conntrack_work.entry(family).or_default();
            for name in names {
                let new = snapshot.service(&name);
                let old = fs.services.get(&name);
                let unchanged = ServicePlan::unchanged(old.map(|o| &o.plan), new);
                if unchanged && !rewrite {
                    continue;
                }
                work.extend(proxy_core::stale::stale_udp(family, old.map(|o| &*o.plan), new.map(|p| &**p), everything));
                // Remember what the touched keys and chains looked like
                // (a rewrite writes everything and needs no record).
                if let Some(o) = old.filter(|_| !rewrite) {
                    for (set, e) in &o.objects.elements {
                        let k = owner_key(set, e);
                        if let std::collections::hash_map::Entry::Vacant(slot) = before.entry(k) {
                            let v = fs.effective(slot.key()).cloned();
                            slot.insert(v);
                        }
                    }
                    for c in &o.objects.chains {
                        before_chains.entry(c.name.clone()).or_insert_with(|| Some(c.clone()));
                    }
                }
                let entry = new.map(|plan| {
                    let mut objects = PortObjects::default();
                    for p in plan.ports.iter().filter(|p| p.family == family) {
                        let d = decide::decide(p, snapshot.masquerade());
                        if d.affinity_timeout_seconds.is_some() {
                            affinity_families.insert(family);
                        }
                        let o = render::render_port(&cfg, p, &d);
                        objects.elements.extend(o.elements);
                        objects.chains.extend(o.chains);
                        objects.behaviours.extend(o.behaviours);
                    }
                    ServiceEntry { plan: plan.clone(), objects }
                });
                if let Some(e) = entry.as_ref().filter(|_| !rewrite) {
                    for (set, el) in &e.objects.elements {
                        let k = owner_key(set, el);
                        if let std::collections::hash_map::Entry::Vacant(slot) = before.entry(k) {
                            let v = fs.effective(slot.key()).cloned();
                            slot.insert(v);
                        }
                    }
                    for c in &e.objects.chains {
                        if !before_chains.contains_key(&c.name) {
                            before_chains.insert(c.name.clone(), fs.chains.get(&c.name).map(|x| x.1.clone()));
                        }
                    }
                }
                fs.set_service(&name, entry, (!rewrite).then_some(&mut touched));
            }
            let behaviours: BTreeSet<Behaviour> = fs.behaviours.keys().copied().collect();
            let mut batch = Batch::new(render::nfproto(family), seq);
            if !rewrite && fs.outgrown() {
                debug!(?family, "a Service set outgrew its size; rewriting the table");
                rewrite = true;
            }
            if rewrite {
                let skel = render::skeleton(&cfg, &behaviours);
                fs.sizes = write_full(&mut batch, fs, &skel);
                fs.skeleton = Some(skel);
                fs.written_behaviours = behaviours;
            } else {
                // Partial: the skeleton only grows (new behaviours); a full
                // rewrite trims it.
                let mut all = fs.written_behaviours.clone();
                all.extend(behaviours.iter().copied());
                let old = fs.skeleton.clone().unwrap_or_else(|| render::skeleton(&cfg, &BTreeSet::new()));
                let skel = render::skeleton(&cfg, &all);
                fs.written_behaviours = all;
                // New behaviours add rules to the class chains: a changed
                // chain is flushed and written again in the same transaction.
                let old_chains: BTreeMap<&str, &Chain> = old.chains.iter().map(|c| (c.name.as_str(), c)).collect();
                for c in &skel.chains {
                    match old_chains.get(c.name.as_str()) {
                        None => batch.add_chain(TABLE, &c.name, c.hook),
                        Some(o) if o.rules != c.rules => batch.flush_chain(TABLE, &c.name),
                        Some(_) => continue,
                    }
                    for r in &c.rules {
                        batch.add_rule(TABLE, &c.name, r, None);
                    }
                }
                let new_elems: Vec<&(&str, Elem)> =
                    skel.elements.iter().filter(|e| !old.elements.contains(e)).collect();
                for (set, e) in new_elems {
                    batch.elements(TABLE, set, &[e], false);
                }
                fs.skeleton = Some(skel);
                // Per-Service chains: new and changed ones before elements refer to them.
                for (name, old_chain) in &before_chains {
                    let new_chain = fs.chains.get(name).map(|c| &c.1);
                    match (old_chain, new_chain) {
                        (None, Some(c)) => {
                            batch.add_chain(TABLE, name, None);
                            for r in &c.rules {
                                batch.add_rule(TABLE, name, r, None);
                            }
                        }
                        (Some(o), Some(c)) if o != c => {
                            batch.flush_chain(TABLE, name);
                            for r in &c.rules {
                                batch.add_rule(TABLE, name, r, None);
                            }
                        }
                        _ => {}
                    }
                }
                let mut dels: BTreeMap<&'static str, Vec<Elem>> = BTreeMap::new();
                let mut adds: BTreeMap<&'static str, Vec<Elem>> = BTreeMap::new();
                for k in &touched {
                    let old = before.get(k).cloned().flatten();
                    let new = fs.effective(k).cloned();
                    if old == new {
                        continue;
                    }
                    if let Some(o) = old {
                        dels.entry(k.0).or_default().push(o);
                    }
                    if let Some(n) = new {
                        adds.entry(k.0).or_default().push(n);
                    }
                }
                // Affinity entries of endpoints this transaction removes go
                // with it: the packet path takes a remembered endpoint as is.
                if affinity_families.contains(&family) && dels.contains_key(sets::ENDPOINTS) {
                    // (An entry that times out between this read and the
                    // commit fails the transaction: it is retried as a full
                    // rewrite. Unreadable: they are cleared after the commit.)
                    match self.stale_affinity(family, fs) {
                        Ok(stale) if !stale.is_empty() => {
                            batch.elements(TABLE, sets::AFFINITY, &stale.iter().collect::<Vec<_>>(), true);
                        }
                        Ok(_) => {}
                        Err(e) => debug!(error = %proxy_core::ErrorChain(&e), "affinity entries not read"),
                    }
                }
                for set in SERVICE_SETS {
                    if let Some(v) = dels.get(set) {
                        batch.elements(TABLE, set, &v.iter().collect::<Vec<_>>(), true);
                    }
                }
                for set in SERVICE_SETS {
                    if let Some(v) = adds.get(set) {
                        batch.elements(TABLE, set, &v.iter().collect::<Vec<_>>(), false);
                    }
                }
                for (name, old_chain) in &before_chains {
                    if old_chain.is_some() && !fs.chains.contains_key(name) {
                        batch.flush_chain(TABLE, name);
                        batch.del_chain(TABLE, name);
                    }
                }
            }
            seq = seq.wrapping_add(batch.messages() as u32 + 2);
            batches.push((family, batch));
        }
        // One transaction per family (nf_tables batches carry one family
        // in their header; each is atomic).
        let mut total_messages = 0;
        let span = info_span!("nftables sync", backend = MODE, full = rewrite, services = snapshot.len());
        let _g = span.enter();
        for (family, batch) in batches {
            if batch.messages() == 0 {
                continue;
            }
            let tx = Transaction::from_batch(batch);
            total_messages += tx.messages;
            debug!(?family, messages = tx.messages, bytes = tx.bytes.len(), "committing");
            if let Err(e) = self.kernel.apply(&tx) {
                state.needs_full = true;
                state.trusted_generation = None;
                state.pending_conntrack = conntrack_work;
                return Err(e);
            }
        }
        state.needs_full = false;
        state.trusted_generation = self.kernel.generation().ok();
        // Affinity entries remembered by the packet path between our read
        // and the commit that point at endpoints now gone.
        for family in &affinity_families {
            if let Err(e) = self.clear_stale_affinity(*family, &state) {
                debug!(error = %proxy_core::ErrorChain(&e), "stale affinity entries not cleared (they time out)");
            }
        }
        if self.settings.conntrack {
            for (family, work) in conntrack_work {
                if work.is_empty() {
                    continue;
                }
                match conntrack::clear_stale_udp(&self.settings.netns, family, work) {
                    Ok(n) if n > 0 => debug!(removed = n, ?family, "stale UDP conntrack entries removed"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %proxy_core::ErrorChain(&e), "stale UDP conntrack cleanup failed"),
                }
            }
        }
        if rewrite || total_messages > 0 {
            info!(rewrite, messages = total_messages, "nftables synced");
        }
        outcome.full = rewrite || request.full;
        for fs in state.families.values() {
            *outcome.objects.entry("service elements".into()).or_insert(0) += fs.owners.len() as u64;
            *outcome.objects.entry("service chains".into()).or_insert(0) += fs.chains.len() as u64;
        }
        Ok(outcome)
    }

    /// Compares our table in the kernel with what we wrote; returns drift by kind.
    fn witness(&self, state: &State) -> Result<BTreeMap<String, u64>, Error> {
        let mut drift: BTreeMap<String, u64> = BTreeMap::new();
        for (family, fs) in &state.families {
            let Some(skel) = &fs.skeleton else { continue };
            let dump = self.kernel.table(*family)?;
            if !dump.exists {
                *drift.entry("table".into()).or_insert(0) += 1;
                continue;
            }
            let mut expected: BTreeMap<String, usize> =
                skel.chains.iter().map(|c| (c.name.clone(), c.rules.len())).collect();
            for (name, (_, c)) in &fs.chains {
                expected.insert(name.clone(), c.rules.len());
            }
            let found: BTreeMap<String, usize> = dump.chains.into_iter().collect();
            for (name, n) in &expected {
                match found.get(name) {
                    None => *drift.entry("chain".into()).or_insert(0) += 1,
                    Some(m) if m != n => *drift.entry("rule".into()).or_insert(0) += n.abs_diff(*m) as u64,
                    _ => {}
                }
            }
            let stray = found.keys().filter(|k| !expected.contains_key(*k)).count();
            if stray > 0 {
                *drift.entry("stray chain".into()).or_insert(0) += stray as u64;
            }
            let found_sets: BTreeSet<String> = dump.sets.into_iter().collect();
            for s in &skel.sets {
                if !found_sets.contains(&s.name) {
                    *drift.entry("set".into()).or_insert(0) += 1;
                }
            }
            let mut want: BTreeMap<&str, BTreeSet<(Vec<u8>, ElemData)>> = BTreeMap::new();
            for ((set, _), m) in &fs.owners {
                if let Some((_, e)) = m.first() {
                    want.entry(set).or_default().insert((e.key.clone(), e.data.clone()));
                }
            }
            for (set, e) in &skel.elements {
                want.entry(set).or_default().insert((e.key.clone(), e.data.clone()));
            }
            for set in SERVICE_SETS.iter() {
                if !found_sets.contains(*set) {
                    continue;
                }
                let got: BTreeSet<(Vec<u8>, ElemData)> =
                    self.kernel.elements(*family, set)?.into_iter().map(|e| (e.key, e.data)).collect();
                let empty = BTreeSet::new();
                let w = want.get(set).unwrap_or(&empty);
                let n = w.symmetric_difference(&got).count();
                if n > 0 {
                    *drift.entry("element".into()).or_insert(0) += n as u64;
                }
            }
        }
        Ok(drift)
    }

    /// Affinity entries whose endpoint no longer serves their frontend and
    /// route (`affinity` key: destination . route . client; `endpoints`
    /// key: destination . route . slot).
    fn stale_affinity(&self, family: IpFamily, fs: &FamilyState) -> Result<Vec<Elem>, Error> {
        let prefix = render::alen(family) as usize + 12;
        let serving: HashSet<(&[u8], &ElemData)> = fs
            .owners
            .iter()
            .filter(|((set, _), _)| *set == sets::ENDPOINTS)
            .filter_map(|(_, m)| m.first())
            .filter_map(|(_, e)| Some((e.key.get(..prefix)?, &e.data)))
            .collect();
        Ok(self
            .kernel
            .elements(family, sets::AFFINITY)?
            .into_iter()
            .filter(|e| e.key.get(..prefix).is_some_and(|p| !serving.contains(&(p, &e.data))))
            .map(|e| Elem { key: e.key, data: ElemData::None, userdata: None })
            .collect())
    }

    fn clear_stale_affinity(&self, family: IpFamily, state: &State) -> Result<(), Error> {
        let Some(fs) = state.families.get(&family) else { return Ok(()) };
        let stale = self.stale_affinity(family, fs)?;
        if stale.is_empty() {
            return Ok(());
        }
        let mut b = Batch::new(render::nfproto(family), 1);
        b.elements(TABLE, sets::AFFINITY, &stale.iter().collect::<Vec<_>>(), true);
        self.kernel.apply(&Transaction::from_batch(b))
    }
}

/// A full rewrite of one family: the table deleted and written again, in one transaction.
/// Returns the sizes the Service sets were created with.
fn write_full(batch: &mut Batch, fs: &FamilyState, skel: &Skeleton) -> BTreeMap<&'static str, u32> {
    // `add table` first so that `delete table` cannot fail on a fresh node.
    batch.add_table(TABLE);
    batch.del_table(TABLE);
    batch.add_table(TABLE);
    let sizes = fs.set_sizes();
    for (i, s) in skel.sets.iter().enumerate() {
        match sizes.get(s.name.as_str()) {
            Some(n) => batch.add_set(TABLE, &SetSpec { size: Some(*n), ..s.clone() }, i as u32 + 1),
            None => batch.add_set(TABLE, s, i as u32 + 1),
        }
    }
    for c in &skel.chains {
        batch.add_chain(TABLE, &c.name, c.hook);
    }
    for (_, c) in fs.chains.values() {
        batch.add_chain(TABLE, &c.name, None);
    }
    for (set, e) in &skel.elements {
        batch.elements(TABLE, set, &[e], false);
    }
    for c in skel.chains.iter().chain(fs.chains.values().map(|(_, c)| c)) {
        for r in &c.rules {
            batch.add_rule(TABLE, &c.name, r, None);
        }
    }
    let mut by_set: BTreeMap<&'static str, Vec<&Elem>> = BTreeMap::new();
    for ((set, _), m) in &fs.owners {
        if let Some((_, e)) = m.first() {
            by_set.entry(set).or_default().push(e);
        }
    }
    for set in SERVICE_SETS {
        if let Some(v) = by_set.get(set) {
            batch.elements(TABLE, set, v, false);
        }
    }
    sizes
}

#[async_trait]
impl Dataplane for NftablesDataplane {
    fn mode(&self) -> &str {
        MODE
    }

    /// Every semantics of `docs/semantics.md`, SCTP included (the kernel's
    /// nf_conntrack_proto_sctp permitting).
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn sync(&self, request: SyncRequest) -> Result<SyncOutcome, DataplaneError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.sync_blocking(&request))
            .await
            .map_err(|e| DataplaneError::failed(MODE, "sync", e))?
            .map_err(|e| DataplaneError::failed(MODE, "sync", e))
    }

    async fn inspect(&self) -> Result<ProgrammedState, DataplaneError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inspect::programmed_state(&*inner.kernel, inner.settings.families))
            .await
            .map_err(|e| DataplaneError::failed(MODE, "inspect", e))?
            .map_err(|e| DataplaneError::failed(MODE, "inspect", e))
    }

    async fn cleanup(&self) -> Result<(), DataplaneError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // Held across the deletion so the event monitor, which takes it
            // too, sees the state already reset and repairs nothing.
            let mut s = inner.state.lock().unwrap_or_else(|p| p.into_inner());
            crate::cleanup::cleanup(&*inner.kernel)?;
            *s = State { needs_full: true, ..State::default() };
            Ok::<(), Error>(())
        })
        .await
        .map_err(|e| DataplaneError::failed(MODE, "cleanup", e))?
        .map_err(|e| DataplaneError::failed(MODE, "cleanup", e))
    }

    fn limitations(&self) -> Vec<String> {
        vec!["node ports are not served on loopback addresses (as kube-proxy's nftables mode)".into()]
    }
}
