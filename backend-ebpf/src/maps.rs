//! The pinned maps: opening them, reading what is programmed, and applying
//! the difference to a desired state.
//!
//! CLI equivalents: `bpftool map dump pinned /sys/fs/bpf/switchyard/maps/swy_svc`,
//! `bpftool map update pinned … key … value …`, `bpftool map delete pinned … key …`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use proxy_core::stale::StaleIndex;
use proxy_core::{EmptyVerdict, Frontend, FrontendKind, IpFamily, ProgrammedFrontend, ProgrammedState, Protocol};

use crate::EbpfError;
use crate::layout::{self, Addr, Backend, BackendKey, Config, MaglevKey, MaglevVal, SrcRangeData, SvcKey, SvcVal};
use crate::render::{self, Desired, RouteSpec};

/// The maps of the service data plane, opened from their pins.
pub struct Maps {
    pub svc: HashMap<MapData, SvcKey, SvcVal>,
    pub route: HashMap<MapData, u64, layout::RouteVal>,
    pub backend: HashMap<MapData, BackendKey, Backend>,
    pub maglev: HashMap<MapData, MaglevKey, MaglevVal>,
    pub ct: HashMap<MapData, layout::CtKey, layout::CtVal>,
    pub sock: HashMap<MapData, layout::SockKey, layout::SockVal>,
    pub node_addrs: HashMap<MapData, Addr, u32>,
    pub cidrs: LpmTrie<MapData, Addr, u32>,
    pub srcrange: LpmTrie<MapData, SrcRangeData, u32>,
    pub config: Array<MapData, Config>,
    pub stats: PerCpuArray<MapData, u64>,
    /// Configured capacity of each map, by name.
    pub capacity: BTreeMap<&'static str, u32>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

/// Every map the programs define, pinned under `<pinPath>/maps/`.
pub const MAP_NAMES: [&str; 13] = [
    "swy_svc",
    "swy_route",
    "swy_backend",
    "swy_maglev",
    "swy_ct",
    "swy_seen",
    "swy_affinity",
    "swy_node_addrs",
    "swy_cidrs",
    "swy_srcrange",
    "swy_sock",
    "swy_config",
    "swy_stats",
];

fn open(dir: &Path, name: &'static str) -> Result<(MapData, u32), EbpfError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| EbpfError::map(name, "open pinned map", e))?;
    let cap = data.info().map(|i| i.max_entries()).unwrap_or(0);
    Ok((data, cap))
}

macro_rules! typed {
    ($dir:expr, $caps:expr, $name:literal, $variant:ident) => {{
        let (data, cap) = open($dir, $name)?;
        $caps.insert($name, cap);
        Map::$variant(data).try_into().map_err(|e| EbpfError::map($name, "open pinned map", e))?
    }};
}

impl Maps {
    /// Opens the pinned maps in `dir` (`<pinPath>/maps`).
    pub fn open(dir: &Path) -> Result<Maps, EbpfError> {
        let mut capacity = BTreeMap::new();
        Ok(Maps {
            svc: typed!(dir, capacity, "swy_svc", HashMap),
            route: typed!(dir, capacity, "swy_route", HashMap),
            backend: typed!(dir, capacity, "swy_backend", HashMap),
            maglev: typed!(dir, capacity, "swy_maglev", HashMap),
            ct: typed!(dir, capacity, "swy_ct", LruHashMap),
            sock: typed!(dir, capacity, "swy_sock", LruHashMap),
            node_addrs: typed!(dir, capacity, "swy_node_addrs", HashMap),
            cidrs: typed!(dir, capacity, "swy_cidrs", LpmTrie),
            srcrange: typed!(dir, capacity, "swy_srcrange", LpmTrie),
            config: typed!(dir, capacity, "swy_config", Array),
            stats: typed!(dir, capacity, "swy_stats", PerCpuArray),
            capacity,
        })
    }

    fn cap(&self, name: &str) -> u64 {
        self.capacity.get(name).copied().map_or(0, u64::from)
    }

    /// Sums the per-CPU counters.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        layout::STAT_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let v = self.stats.get(&(i as u32), 0).map(|vals| vals.iter().sum()).unwrap_or(0);
                (*name, v)
            })
            .collect()
    }
}

/// What the service maps hold, as read back (or as last written).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    pub frontends: BTreeMap<SvcKey, SvcVal>,
    /// Route id → (its value, the backends of its current generation).
    pub routes: BTreeMap<u64, (layout::RouteVal, Vec<Backend>)>,
    pub source_ranges: BTreeSet<(u32, SrcRangeData)>,
    pub cluster_cidrs: BTreeSet<(u32, Addr)>,
}

fn is_not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound | MapError::ElementNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

impl Programmed {
    /// Reads the service maps.
    pub fn read(maps: &Maps) -> Result<Programmed, EbpfError> {
        let mut out = Programmed::default();
        for item in maps.svc.iter() {
            let (k, v) = item.map_err(|e| EbpfError::map("swy_svc", "iterate", e))?;
            out.frontends.insert(k, v);
        }
        for item in maps.route.iter() {
            let (id, rv) = item.map_err(|e| EbpfError::map("swy_route", "iterate", e))?;
            let mut backends = Vec::with_capacity(rv.count as usize);
            for slot in 0..rv.count {
                match maps.backend.get(&BackendKey { route: id, generation: rv.generation, slot }, 0) {
                    Ok(b) => backends.push(b),
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(EbpfError::map("swy_backend", "lookup", e)),
                }
            }
            out.routes.insert(id, (rv, backends));
        }
        for item in maps.srcrange.keys() {
            let k = item.map_err(|e| EbpfError::map("swy_srcrange", "iterate", e))?;
            out.source_ranges.insert((k.prefix_len(), k.data()));
        }
        for item in maps.cidrs.keys() {
            let k = item.map_err(|e| EbpfError::map("swy_cidrs", "iterate", e))?;
            out.cluster_cidrs.insert((k.prefix_len(), k.data()));
        }
        Ok(out)
    }

    /// The backend-neutral view of these maps.
    pub fn to_state(&self) -> ProgrammedState {
        let endpoints = |id: &u64| -> (BTreeSet<SocketAddr>, Option<EmptyVerdict>) {
            match self.routes.get(id) {
                Some((rv, backends)) => {
                    let set: BTreeSet<SocketAddr> =
                        backends.iter().map(|b| SocketAddr::new(b.addr.to_ip(), u16::from_be(b.port))).collect();
                    let verdict = match rv.verdict {
                        layout::REJECT => Some(EmptyVerdict::Reject),
                        layout::DROP => Some(EmptyVerdict::Drop),
                        _ if set.is_empty() => Some(EmptyVerdict::Drop),
                        _ => None,
                    };
                    (set, verdict)
                }
                // A frontend whose route is missing drops its traffic.
                None => (BTreeSet::new(), Some(EmptyVerdict::Drop)),
            }
        };
        let mut frontends = BTreeMap::new();
        for (key, val) in &self.frontends {
            let (Some(kind), Some(protocol)) = (render::kind_of(val.kind), protocol_of(key.proto)) else { continue };
            // A node-port key carries the unspecified address of its family.
            let ip = key.addr.to_ip();
            let frontend = Frontend {
                kind,
                ip: (key.scope != layout::SCOPE_NODEPORT).then_some(ip),
                family: IpFamily::of(&ip),
                port: u16::from_be(key.port),
                protocol,
            };
            let ext = val.route[layout::CLASS_EXTERNAL];
            let pod = val.route[layout::CLASS_POD];
            let (eps, verdict) = endpoints(&ext);
            // Reported when pods reach something else than outside traffic
            // (as `Snapshot::expected_state`): the routes are named, so two
            // ids may hold the same set.
            let (pod_eps, pod_verdict) = endpoints(&pod);
            let differs = pod_eps != eps || pod_verdict != verdict;
            let cluster_endpoints = (kind != FrontendKind::ClusterIP && differs).then_some(pod_eps);
            frontends.insert(
                frontend,
                ProgrammedFrontend {
                    service: None,
                    endpoints: eps,
                    cluster_endpoints,
                    empty_verdict: verdict,
                    affinity_timeout_seconds: (val.affinity_timeout != 0).then_some(val.affinity_timeout),
                },
            );
        }
        ProgrammedState { frontends, unattached: Vec::new() }
    }

    /// What the maps hold once `desired` is applied (generations aside).
    pub fn from_desired(desired: &Desired) -> Programmed {
        Programmed {
            frontends: desired.frontends.clone(),
            routes: desired
                .routes
                .iter()
                .map(|(id, spec)| (*id, (route_val(spec, 0), spec.backends.clone())))
                .collect(),
            source_ranges: desired.source_ranges.clone(),
            cluster_cidrs: desired.cluster_cidrs.clone(),
        }
    }
}

fn protocol_of(n: u8) -> Option<Protocol> {
    Protocol::ALL.into_iter().find(|p| p.number() == n)
}

fn route_val(spec: &RouteSpec, generation: u32) -> layout::RouteVal {
    layout::RouteVal {
        generation,
        count: spec.backends.len() as u32,
        verdict: spec.verdict,
        flags: spec.flags,
        ..Default::default()
    }
}

fn same_route(cur: &(layout::RouteVal, Vec<Backend>), spec: &RouteSpec) -> bool {
    cur.0.verdict == spec.verdict && cur.0.flags == spec.flags && cur.1 == spec.backends
}

/// Counts of kernel writes of one apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub routes_written: usize,
    pub routes_deleted: usize,
    pub frontends_written: usize,
    pub frontends_deleted: usize,
}

impl ApplyStats {
    pub fn add(&mut self, other: &ApplyStats) {
        self.routes_written += other.routes_written;
        self.routes_deleted += other.routes_deleted;
        self.frontends_written += other.frontends_written;
        self.frontends_deleted += other.frontends_deleted;
    }
}

fn full_or(maps: &Maps, name: &'static str, op: &'static str, e: MapError) -> EbpfError {
    if let MapError::SyscallError(s) = &e
        && s.io_error.raw_os_error() == Some(libc::E2BIG)
    {
        return EbpfError::Full { map: name, capacity: maps.cap(name) };
    }
    EbpfError::map(name, op, e)
}

/// Entries each sized service map needs for `desired`.
pub fn needs(desired: &Desired) -> [(&'static str, usize); 5] {
    [
        ("swy_svc", desired.frontends.len()),
        ("swy_route", desired.routes.len()),
        ("swy_backend", desired.routes.values().map(|r| r.backends.len()).sum()),
        ("swy_srcrange", desired.source_ranges.len()),
        ("swy_maglev", desired.routes.values().filter(|r| r.maglev()).count()),
    ]
}

/// Refuses up front what cannot fit, so that the previous state stays whole.
pub fn check_capacity(maps: &Maps, needs: &[(&'static str, usize)]) -> Result<(), EbpfError> {
    for (name, need) in needs {
        if *need as u64 > maps.cap(name) {
            return Err(EbpfError::Full { map: name, capacity: maps.cap(name) });
        }
    }
    Ok(())
}

/// Makes the service maps hold `desired`, given that they hold `current`
/// (both may be one Service's share: then only its entries are touched).
/// Capacity is the caller's to check ([`check_capacity`]).
///
/// Order keeps every reader consistent: a changed route gets its new
/// backend slots under a new generation first, then one update of its
/// `swy_route` value flips readers to them, then the old slots go; frontends
/// are written after the routes they point to and removed before them.
/// On error, `current` is updated to what was written so far.
pub fn apply(maps: &mut Maps, current: &mut Programmed, desired: &Desired) -> Result<ApplyStats, EbpfError> {
    let mut stats = ApplyStats::default();
    for (net, addr) in desired.cluster_cidrs.difference(&current.cluster_cidrs.clone()) {
        maps.cidrs.insert(&LpmKey::new(*net, *addr), 1, 0).map_err(|e| EbpfError::map("swy_cidrs", "update", e))?;
        current.cluster_cidrs.insert((*net, *addr));
    }
    for (net, addr) in current.cluster_cidrs.clone().difference(&desired.cluster_cidrs) {
        match maps.cidrs.remove(&LpmKey::new(*net, *addr)) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(EbpfError::map("swy_cidrs", "delete", e)),
        }
        current.cluster_cidrs.remove(&(*net, *addr));
    }

    for (id, spec) in &desired.routes {
        let old = current.routes.get(id);
        if old.is_some_and(|cur| same_route(cur, spec)) {
            continue;
        }
        let generation = old.map_or(1, |(rv, _)| rv.generation.wrapping_add(1));
        for (slot, b) in spec.backends.iter().enumerate() {
            maps.backend
                .insert(BackendKey { route: *id, generation, slot: slot as u32 }, b, 0)
                .map_err(|e| full_or(maps, "swy_backend", "update", e))?;
        }
        if spec.maglev() {
            let mut val = MaglevVal { slot: [0; layout::MAGLEV_M] };
            val.slot.copy_from_slice(&render::maglev_table(&spec.backends));
            maps.maglev
                .insert(MaglevKey { route: *id, generation, pad: 0 }, val, 0)
                .map_err(|e| full_or(maps, "swy_maglev", "update", e))?;
        }
        let rv = route_val(spec, generation);
        maps.route.insert(id, rv, 0).map_err(|e| full_or(maps, "swy_route", "update", e))?;
        if let Some((old_rv, _)) = current.insert_route(*id, rv, spec.backends.clone()) {
            delete_generation(maps, *id, &old_rv)?;
        }
        stats.routes_written += 1;
    }

    for (key, val) in desired.source_ranges.difference(&current.source_ranges.clone()) {
        maps.srcrange.insert(&LpmKey::new(*key, *val), 1, 0).map_err(|e| full_or(maps, "swy_srcrange", "update", e))?;
        current.source_ranges.insert((*key, *val));
    }

    for (key, val) in &desired.frontends {
        if current.frontends.get(key) == Some(val) {
            continue;
        }
        maps.svc.insert(key, val, 0).map_err(|e| full_or(maps, "swy_svc", "update", e))?;
        current.frontends.insert(*key, *val);
        stats.frontends_written += 1;
    }
    let stale: Vec<SvcKey> = current.frontends.keys().filter(|k| !desired.frontends.contains_key(k)).copied().collect();
    for key in stale {
        match maps.svc.remove(&key) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(EbpfError::map("swy_svc", "delete", e)),
        }
        current.frontends.remove(&key);
        stats.frontends_deleted += 1;
    }

    for (key, val) in current.source_ranges.clone().difference(&desired.source_ranges) {
        match maps.srcrange.remove(&LpmKey::new(*key, *val)) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(EbpfError::map("swy_srcrange", "delete", e)),
        }
        current.source_ranges.remove(&(*key, *val));
    }

    let stale: Vec<u64> = current.routes.keys().filter(|id| !desired.routes.contains_key(id)).copied().collect();
    for id in stale {
        match maps.route.remove(&id) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(EbpfError::map("swy_route", "delete", e)),
        }
        if let Some((rv, _)) = current.routes.remove(&id) {
            delete_generation(maps, id, &rv)?;
        }
        stats.routes_deleted += 1;
    }
    Ok(stats)
}

impl Programmed {
    /// The part of these maps that `share` (one Service's rendering) names.
    pub fn share(&self, share: &Desired) -> Programmed {
        Programmed {
            frontends: share.frontends.keys().filter_map(|k| self.frontends.get(k).map(|v| (*k, *v))).collect(),
            routes: share.routes.keys().filter_map(|id| self.routes.get(id).map(|r| (*id, r.clone()))).collect(),
            source_ranges: share.source_ranges.intersection(&self.source_ranges).copied().collect(),
            cluster_cidrs: self.cluster_cidrs.clone(),
        }
    }

    /// Replaces the entries `old` (a Service's previous share) names with `now`.
    pub fn replace_share(&mut self, old: &Desired, now: Programmed) {
        for k in old.frontends.keys() {
            self.frontends.remove(k);
        }
        for id in old.routes.keys() {
            self.routes.remove(id);
        }
        for r in &old.source_ranges {
            self.source_ranges.remove(r);
        }
        self.frontends.extend(now.frontends);
        self.routes.extend(now.routes);
        self.source_ranges.extend(now.source_ranges);
    }

    fn insert_route(
        &mut self,
        id: u64,
        rv: layout::RouteVal,
        b: Vec<Backend>,
    ) -> Option<(layout::RouteVal, Vec<Backend>)> {
        self.routes.insert(id, (rv, b))
    }
}

fn delete_generation(maps: &mut Maps, route: u64, rv: &layout::RouteVal) -> Result<(), EbpfError> {
    for slot in 0..rv.count {
        match maps.backend.remove(&BackendKey { route, generation: rv.generation, slot }) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(EbpfError::map("swy_backend", "delete", e)),
        }
    }
    if rv.flags & layout::ROUTE_MAGLEV != 0 {
        match maps.maglev.remove(&MaglevKey { route, generation: rv.generation, pad: 0 }) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(EbpfError::map("swy_maglev", "delete", e)),
        }
    }
    Ok(())
}

/// Removes backend slots and Maglev tables that no route points to (left
/// by a crash between writing and flipping). Full syncs only: it walks the maps.
pub fn collect_garbage(maps: &mut Maps, current: &Programmed) -> Result<usize, EbpfError> {
    let live =
        |route: u64, generation: u32| current.routes.get(&route).is_some_and(|(rv, _)| rv.generation == generation);
    let mut stray = Vec::new();
    for k in maps.backend.keys() {
        let k = k.map_err(|e| EbpfError::map("swy_backend", "iterate", e))?;
        let in_use =
            current.routes.get(&k.route).is_some_and(|(rv, _)| rv.generation == k.generation && k.slot < rv.count);
        if !in_use {
            stray.push(k);
        }
    }
    let mut stray_maglev = Vec::new();
    for k in maps.maglev.keys() {
        let k = k.map_err(|e| EbpfError::map("swy_maglev", "iterate", e))?;
        if !live(k.route, k.generation) {
            stray_maglev.push(k);
        }
    }
    let n = stray.len() + stray_maglev.len();
    for k in stray {
        let _ = maps.backend.remove(&k);
    }
    for k in stray_maglev {
        let _ = maps.maglev.remove(&k);
    }
    Ok(n)
}

fn socket(addr: Addr, port: u16) -> SocketAddr {
    SocketAddr::new(addr.to_ip(), u16::from_be(port))
}

/// A UDP flow of `swy_ct` as conntrack would show it: (original
/// destination, reply source). Only entries the TC program made when it
/// translated a frontend (they carry a route); a forward entry is keyed by
/// the client's packet and holds the backend, a reverse one is keyed by the
/// backend's reply and holds the frontend. Egress SNAT and port-remap
/// entries translate no frontend: None.
pub fn ct_flow(k: &layout::CtKey, v: &layout::CtVal) -> Option<(SocketAddr, SocketAddr)> {
    if k.proto != libc::IPPROTO_UDP as u8 || v.route == 0 || v.flags & layout::CT_EGRESS != 0 {
        return None;
    }
    Some(if v.dir == layout::CT_FORWARD {
        (socket(k.dst, k.dport), socket(v.nat, v.nat_port))
    } else {
        (socket(v.nat, v.nat_port), socket(k.src, k.sport))
    })
}

/// The socket hooks' choice for an unconnected UDP socket (a forward
/// entry: frontend → backend), as (original destination, reply source).
/// Reverse entries only map replies back and are LRU-evicted: None.
pub fn sock_flow(k: &layout::SockKey, v: &layout::SockVal) -> Option<(SocketAddr, SocketAddr)> {
    (k.dir == layout::SOCK_FORWARD).then(|| (socket(k.addr, k.port), socket(v.addr, v.port)))
}

/// Deletes the UDP flows the core says are stale ([`proxy_core::stale`]):
/// their `swy_ct` entries (both directions), so that the next datagram
/// picks a backend again, and the socket hooks' choices for unconnected UDP
/// sockets of node processes (a connected UDP socket keeps the backend
/// `connect()` gave it). Returns how many entries went.
///
/// CLI equivalent: `bpftool map dump pinned …/swy_ct`, then `bpftool map
/// delete` of each matching key.
pub fn flush_stale_udp(maps: &mut Maps, stale: &StaleIndex) -> Result<usize, EbpfError> {
    if stale.is_empty() {
        return Ok(0);
    }
    let is_stale = |flow: Option<(SocketAddr, SocketAddr)>| flow.is_some_and(|(dst, reply)| stale.matches(dst, reply));
    let mut doomed = Vec::new();
    for item in maps.ct.iter() {
        let (k, v) = match item {
            Ok(kv) => kv,
            // An LRU entry evicted while we walk: skip it.
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(EbpfError::map("swy_ct", "iterate", e)),
        };
        if is_stale(ct_flow(&k, &v)) {
            doomed.push(k);
        }
    }
    let mut n = 0;
    for k in doomed {
        match maps.ct.remove(&k) {
            Ok(()) => n += 1,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(EbpfError::map("swy_ct", "delete", e)),
        }
    }
    let mut stale_sockets = Vec::new();
    for item in maps.sock.iter() {
        let Ok((k, v)) = item else { continue };
        if is_stale(sock_flow(&k, &v)) {
            stale_sockets.push(k);
        }
    }
    for k in stale_sockets {
        if maps.sock.remove(&k).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// Writes the node's addresses (those accepting NodePorts flagged).
pub fn set_node_addrs(maps: &mut Maps, want: &BTreeMap<Addr, u32>) -> Result<(), EbpfError> {
    let mut have = BTreeMap::new();
    for item in maps.node_addrs.iter() {
        let (k, v) = item.map_err(|e| EbpfError::map("swy_node_addrs", "iterate", e))?;
        have.insert(k, v);
    }
    for (k, v) in want {
        if have.get(k) != Some(v) {
            maps.node_addrs.insert(k, v, 0).map_err(|e| full_or(maps, "swy_node_addrs", "update", e))?;
        }
    }
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        let _ = maps.node_addrs.remove(k);
    }
    Ok(())
}

pub fn set_config(maps: &mut Maps, cfg: &Config) -> Result<(), EbpfError> {
    if maps.config.get(&0, 0).ok().as_ref() == Some(cfg) {
        return Ok(());
    }
    maps.config.set(0, cfg, 0).map_err(|e| EbpfError::map("swy_config", "update", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{RenderOptions, render};
    use crate::testutil::*;

    /// The maps a render produces, read back, say exactly what the plans
    /// say: the inspect() contract without a kernel.
    #[test]
    fn rendered_maps_read_back_as_the_expected_state() {
        let snap = sample_snapshot();
        let desired = render(&snap, &RenderOptions::default());
        assert!(desired.skipped.is_empty(), "{:?}", desired.skipped);
        let state = Programmed::from_desired(&desired).to_state();
        let diff = snap.expected_state().diff(&state);
        assert!(diff.is_empty(), "{}", diff.iter().map(|d| format!("{d}\n")).collect::<String>());
    }

    /// A partial sync replaces one Service's share: the result equals what
    /// a full render of the new snapshot holds.
    #[test]
    fn replacing_one_share_equals_a_full_render() {
        use proxy_core::testing::{ServiceBuilder, endpoint};
        let opts = RenderOptions::default();
        let before = sample_snapshot();
        let mut programmed = Programmed::from_desired(&render(&before, &opts));
        let services =
            vec![ServiceBuilder::new("default", "dns", "10.96.0.53").port("", 53, "UDP").affinity(Some(60)).build()];
        let slices =
            vec![crate::testutil::slice_of("dns-1", "dns", 5353, "UDP", vec![endpoint("10.244.1.6").node(NODE)])];
        let dns_only = snapshot(services, slices, masq());
        let name = dns_only.services().next().expect("dns").name().clone();
        let old = render(&before, &opts).by_service[&name].clone();
        let new = crate::render::render_service(dns_only.service(&name).expect("dns"), before.masquerade(), &opts);
        programmed.replace_share(&old, Programmed::from_desired(&new));
        // The full render of "sample with dns changed" is the same maps.
        let mut want = render(&before, &opts);
        want.frontends.retain(|k, _| !old.frontends.contains_key(k));
        want.routes.retain(|id, _| !old.routes.contains_key(id));
        want.frontends.extend(new.frontends.clone());
        want.routes.extend(new.routes.clone());
        assert_eq!(programmed, Programmed::from_desired(&want));
    }

    /// The conntrack and socket entries of a UDP flow whose endpoint went
    /// away are stale by the core's answer, in both directions; a flow to
    /// an endpoint still there, a TCP flow and an egress SNAT entry are not.
    #[test]
    fn flows_in_the_maps_are_stale_as_the_core_says() {
        use proxy_core::testing::{ServiceBuilder, endpoint};
        let dns = || ServiceBuilder::new("default", "dns", "10.96.0.53").port("", 53, "UDP").build();
        let before = snapshot(
            vec![dns()],
            vec![slice_of("dns-1", "dns", 5353, "UDP", vec![endpoint("10.244.1.6").node(NODE), endpoint("10.244.2.6")])],
            masq(),
        );
        let after = snapshot(
            vec![dns()],
            vec![slice_of("dns-1", "dns", 5353, "UDP", vec![endpoint("10.244.1.6").node(NODE)])],
            masq(),
        );
        let name = after.services().next().expect("dns").name().clone();
        let request = proxy_core::SyncRequest {
            snapshot: after.clone(),
            changed: std::sync::Arc::new([name].into()),
            full: false,
        };
        let work = proxy_core::stale::stale_udp_of_sync(IpFamily::ALL, Some(&before), &request, false);
        let stale = StaleIndex::new(work.values().flatten());

        let addr = |s: &str| Addr::from(s.parse::<std::net::IpAddr>().expect("ip"));
        let client = addr("10.244.1.5");
        let frontend = addr("10.96.0.53");
        let (gone, kept) = (addr("10.244.2.6"), addr("10.244.1.6"));
        let forward = |backend: Addr, proto: u8| {
            let k = layout::CtKey { src: client, dst: frontend, sport: 40000u16.to_be(), dport: 53u16.to_be(), proto, pad: [0; 3] };
            let v = layout::CtVal { nat: backend, nat_port: 5353u16.to_be(), dir: layout::CT_FORWARD, route: 7, ..Default::default() };
            (k, v)
        };
        let reverse = |backend: Addr| {
            let k = layout::CtKey { src: backend, dst: client, sport: 5353u16.to_be(), dport: 40000u16.to_be(), proto: 17, pad: [0; 3] };
            let v = layout::CtVal { nat: frontend, nat_port: 53u16.to_be(), nat2: client, nat2_port: 40000u16.to_be(), dir: layout::CT_REVERSE, route: 7, ..Default::default() };
            (k, v)
        };
        let ct_stale = |(k, v): (layout::CtKey, layout::CtVal)| ct_flow(&k, &v).is_some_and(|(d, r)| stale.matches(d, r));
        assert!(ct_stale(forward(gone, 17)), "forward entry to the removed endpoint");
        assert!(ct_stale(reverse(gone)), "reverse entry of the removed endpoint");
        assert!(!ct_stale(forward(kept, 17)), "the endpoint still there");
        assert!(!ct_stale(reverse(kept)));
        assert!(!ct_stale(forward(gone, 6)), "TCP flows end on their own");
        let (k, mut v) = forward(gone, 17);
        v.flags = layout::CT_EGRESS | layout::CT_SNAT;
        v.route = 0;
        assert!(!ct_stale((k, v)), "an egress SNAT entry translates no frontend");

        let sock = |dir: u8, backend: Addr| {
            let k = layout::SockKey { cookie: 9, addr: frontend, port: 53u16.to_be(), dir, pad: [0; 5] };
            let v = layout::SockVal { addr: backend, port: 5353u16.to_be(), ..Default::default() };
            sock_flow(&k, &v).is_some_and(|(d, r)| stale.matches(d, r))
        };
        assert!(sock(layout::SOCK_FORWARD, gone), "an unconnected socket's choice of the removed endpoint");
        assert!(!sock(layout::SOCK_FORWARD, kept));
        assert!(!sock(layout::SOCK_REVERSE, gone), "reverse socket entries are left to the LRU");
    }
}
