//! The pinned maps: opening them, reading what is programmed, and applying
//! the difference to a desired state.
//!
//! Everything here writes through [`MapWriter`], one [`Table`] per map: the
//! pinned maps ([`Maps`]) in production, an in-memory fake
//! ([`crate::fake::FakeMaps`]) in unit tests.
//!
//! CLI equivalents: `bpftool map dump pinned /sys/fs/bpf/switchyard/maps/swy_svc`,
//! `bpftool map update pinned … key … value …`, `bpftool map delete pinned … key …`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use aya::Pod;
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use proxy_core::stale::StaleIndex;
use proxy_core::{EmptyVerdict, Frontend, FrontendKind, IpFamily, ProgrammedFrontend, ProgrammedState, Protocol};

use crate::EbpfError;
use crate::layout::{
    self, Addr, Backend, BackendKey, Config, CtKey, CtVal, MaglevKey, MaglevVal, RouteVal, SockKey, SockVal,
    SrcRangeData, SvcKey, SvcVal,
};
use crate::render::{self, Desired, RouteSpec};

/// One map as the sync sees it: typed entries; a missing key is `None` or
/// `false`, not an error; a full map is [`EbpfError::Full`].
pub trait Table<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>, EbpfError>;
    fn insert(&mut self, key: K, value: V) -> Result<(), EbpfError>;
    /// Whether the key was there.
    fn remove(&mut self, key: &K) -> Result<bool, EbpfError>;
    /// Every entry; an LRU entry evicted during the walk is skipped.
    fn entries(&self) -> Result<Vec<(K, V)>, EbpfError>;
}

/// The maps a sync reads and writes (LPM keys as `(prefix length, data)`,
/// `swy_config` by index).
pub trait MapWriter {
    /// Configured capacity of a map, by name (0 when unknown).
    fn capacity(&self, map: &str) -> u64;
    fn svc(&mut self) -> &mut dyn Table<SvcKey, SvcVal>;
    fn route(&mut self) -> &mut dyn Table<u64, RouteVal>;
    fn backend(&mut self) -> &mut dyn Table<BackendKey, Backend>;
    fn maglev(&mut self) -> &mut dyn Table<MaglevKey, MaglevVal>;
    fn ct(&mut self) -> &mut dyn Table<CtKey, CtVal>;
    fn sock(&mut self) -> &mut dyn Table<SockKey, SockVal>;
    fn node_addrs(&mut self) -> &mut dyn Table<Addr, u32>;
    fn cidrs(&mut self) -> &mut dyn Table<(u32, Addr), u32>;
    fn srcrange(&mut self) -> &mut dyn Table<(u32, SrcRangeData), u32>;
    fn config(&mut self) -> &mut dyn Table<u32, Config>;
}

/// A pinned map, with its name and capacity for errors.
#[derive(Debug)]
pub struct Pinned<M> {
    pub name: &'static str,
    pub capacity: u32,
    pub map: M,
}

impl<M> Pinned<M> {
    fn full_or(&self, op: &'static str, e: MapError) -> EbpfError {
        if let MapError::SyscallError(s) = &e
            && s.io_error.raw_os_error() == Some(libc::E2BIG)
        {
            return EbpfError::Full { map: self.name, capacity: u64::from(self.capacity) };
        }
        EbpfError::map(self.name, op, e)
    }

    fn found<T>(&self, op: &'static str, r: Result<T, MapError>) -> Result<Option<T>, EbpfError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(EbpfError::map(self.name, op, e)),
        }
    }
}

impl<K: Pod, V: Pod> Table<K, V> for Pinned<HashMap<MapData, K, V>> {
    fn get(&self, key: &K) -> Result<Option<V>, EbpfError> {
        self.found("lookup", self.map.get(key, 0))
    }
    fn insert(&mut self, key: K, value: V) -> Result<(), EbpfError> {
        self.map.insert(key, value, 0).map_err(|e| self.full_or("update", e))
    }
    fn remove(&mut self, key: &K) -> Result<bool, EbpfError> {
        let r = self.map.remove(key);
        self.found("delete", r).map(|o| o.is_some())
    }
    fn entries(&self) -> Result<Vec<(K, V)>, EbpfError> {
        let mut out = Vec::new();
        for item in self.map.iter() {
            if let Some(kv) = self.found("iterate", item)? {
                out.push(kv);
            }
        }
        Ok(out)
    }
}

impl<K: Pod> Table<(u32, K), u32> for Pinned<LpmTrie<MapData, K, u32>> {
    fn get(&self, key: &(u32, K)) -> Result<Option<u32>, EbpfError> {
        self.found("lookup", self.map.get(&LpmKey::new(key.0, key.1), 0))
    }
    fn insert(&mut self, key: (u32, K), value: u32) -> Result<(), EbpfError> {
        self.map.insert(&LpmKey::new(key.0, key.1), value, 0).map_err(|e| self.full_or("update", e))
    }
    fn remove(&mut self, key: &(u32, K)) -> Result<bool, EbpfError> {
        let r = self.map.remove(&LpmKey::new(key.0, key.1));
        self.found("delete", r).map(|o| o.is_some())
    }
    fn entries(&self) -> Result<Vec<((u32, K), u32)>, EbpfError> {
        let mut out = Vec::new();
        for item in self.map.iter() {
            if let Some((k, v)) = self.found("iterate", item)? {
                out.push(((k.prefix_len(), k.data()), v));
            }
        }
        Ok(out)
    }
}

impl<V: Pod> Table<u32, V> for Pinned<Array<MapData, V>> {
    fn get(&self, index: &u32) -> Result<Option<V>, EbpfError> {
        self.found("lookup", self.map.get(index, 0))
    }
    fn insert(&mut self, index: u32, value: V) -> Result<(), EbpfError> {
        self.map.set(index, value, 0).map_err(|e| self.full_or("update", e))
    }
    /// Array entries cannot be deleted (the kernel refuses): nothing happens.
    fn remove(&mut self, _index: &u32) -> Result<bool, EbpfError> {
        Ok(false)
    }
    fn entries(&self) -> Result<Vec<(u32, V)>, EbpfError> {
        let mut out = Vec::new();
        for i in 0..self.map.len() {
            if let Some(v) = self.get(&i)? {
                out.push((i, v));
            }
        }
        Ok(out)
    }
}

/// The maps of the service data plane, opened from their pins.
pub struct Maps {
    pub svc: Pinned<HashMap<MapData, SvcKey, SvcVal>>,
    pub route: Pinned<HashMap<MapData, u64, RouteVal>>,
    pub backend: Pinned<HashMap<MapData, BackendKey, Backend>>,
    pub maglev: Pinned<HashMap<MapData, MaglevKey, MaglevVal>>,
    pub ct: Pinned<HashMap<MapData, CtKey, CtVal>>,
    pub sock: Pinned<HashMap<MapData, SockKey, SockVal>>,
    pub node_addrs: Pinned<HashMap<MapData, Addr, u32>>,
    pub cidrs: Pinned<LpmTrie<MapData, Addr, u32>>,
    pub srcrange: Pinned<LpmTrie<MapData, SrcRangeData, u32>>,
    pub config: Pinned<Array<MapData, Config>>,
    pub stats: PerCpuArray<MapData, u64>,
    /// Configured capacity of each map, by name.
    pub capacity: BTreeMap<&'static str, u32>,
}

impl MapWriter for Maps {
    fn capacity(&self, map: &str) -> u64 {
        self.capacity.get(map).copied().map_or(0, u64::from)
    }
    fn svc(&mut self) -> &mut dyn Table<SvcKey, SvcVal> {
        &mut self.svc
    }
    fn route(&mut self) -> &mut dyn Table<u64, RouteVal> {
        &mut self.route
    }
    fn backend(&mut self) -> &mut dyn Table<BackendKey, Backend> {
        &mut self.backend
    }
    fn maglev(&mut self) -> &mut dyn Table<MaglevKey, MaglevVal> {
        &mut self.maglev
    }
    fn ct(&mut self) -> &mut dyn Table<CtKey, CtVal> {
        &mut self.ct
    }
    fn sock(&mut self) -> &mut dyn Table<SockKey, SockVal> {
        &mut self.sock
    }
    fn node_addrs(&mut self) -> &mut dyn Table<Addr, u32> {
        &mut self.node_addrs
    }
    fn cidrs(&mut self) -> &mut dyn Table<(u32, Addr), u32> {
        &mut self.cidrs
    }
    fn srcrange(&mut self) -> &mut dyn Table<(u32, SrcRangeData), u32> {
        &mut self.srcrange
    }
    fn config(&mut self) -> &mut dyn Table<u32, Config> {
        &mut self.config
    }
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
        Pinned {
            name: $name,
            capacity: cap,
            map: Map::$variant(data).try_into().map_err(|e| EbpfError::map($name, "open pinned map", e))?,
        }
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
            stats: {
                let (data, cap) = open(dir, "swy_stats")?;
                capacity.insert("swy_stats", cap);
                Map::PerCpuArray(data).try_into().map_err(|e| EbpfError::map("swy_stats", "open pinned map", e))?
            },
            capacity,
        })
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
    pub fn read(maps: &mut dyn MapWriter) -> Result<Programmed, EbpfError> {
        let mut out = Programmed::default();
        out.frontends.extend(maps.svc().entries()?);
        for (id, rv) in maps.route().entries()? {
            let mut backends = Vec::with_capacity(rv.count as usize);
            for slot in 0..rv.count {
                if let Some(b) = maps.backend().get(&BackendKey { route: id, generation: rv.generation, slot })? {
                    backends.push(b);
                }
            }
            out.routes.insert(id, (rv, backends));
        }
        out.source_ranges.extend(maps.srcrange().entries()?.into_iter().map(|(k, _)| k));
        out.cluster_cidrs.extend(maps.cidrs().entries()?.into_iter().map(|(k, _)| k));
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
pub fn check_capacity(maps: &dyn MapWriter, needs: &[(&'static str, usize)]) -> Result<(), EbpfError> {
    for (name, need) in needs {
        if *need as u64 > maps.capacity(name) {
            return Err(EbpfError::Full { map: name, capacity: maps.capacity(name) });
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
pub fn apply(maps: &mut dyn MapWriter, current: &mut Programmed, desired: &Desired) -> Result<ApplyStats, EbpfError> {
    let mut stats = ApplyStats::default();
    for (net, addr) in desired.cluster_cidrs.difference(&current.cluster_cidrs.clone()) {
        maps.cidrs().insert((*net, *addr), 1)?;
        current.cluster_cidrs.insert((*net, *addr));
    }
    for (net, addr) in current.cluster_cidrs.clone().difference(&desired.cluster_cidrs) {
        maps.cidrs().remove(&(*net, *addr))?;
        current.cluster_cidrs.remove(&(*net, *addr));
    }

    for (id, spec) in &desired.routes {
        let old = current.routes.get(id);
        if old.is_some_and(|cur| same_route(cur, spec)) {
            continue;
        }
        let generation = old.map_or(1, |(rv, _)| rv.generation.wrapping_add(1));
        for (slot, b) in spec.backends.iter().enumerate() {
            maps.backend().insert(BackendKey { route: *id, generation, slot: slot as u32 }, *b)?;
        }
        if spec.maglev() {
            let mut val = MaglevVal { slot: [0; layout::MAGLEV_M] };
            val.slot.copy_from_slice(&render::maglev_table(&spec.backends));
            maps.maglev().insert(MaglevKey { route: *id, generation, pad: 0 }, val)?;
        }
        let rv = route_val(spec, generation);
        maps.route().insert(*id, rv)?;
        if let Some((old_rv, _)) = current.insert_route(*id, rv, spec.backends.clone()) {
            delete_generation(maps, *id, &old_rv)?;
        }
        stats.routes_written += 1;
    }

    for (key, val) in desired.source_ranges.difference(&current.source_ranges.clone()) {
        maps.srcrange().insert((*key, *val), 1)?;
        current.source_ranges.insert((*key, *val));
    }

    for (key, val) in &desired.frontends {
        if current.frontends.get(key) == Some(val) {
            continue;
        }
        maps.svc().insert(*key, *val)?;
        current.frontends.insert(*key, *val);
        stats.frontends_written += 1;
    }
    let stale: Vec<SvcKey> = current.frontends.keys().filter(|k| !desired.frontends.contains_key(k)).copied().collect();
    for key in stale {
        maps.svc().remove(&key)?;
        current.frontends.remove(&key);
        stats.frontends_deleted += 1;
    }

    for (key, val) in current.source_ranges.clone().difference(&desired.source_ranges) {
        maps.srcrange().remove(&(*key, *val))?;
        current.source_ranges.remove(&(*key, *val));
    }

    let stale: Vec<u64> = current.routes.keys().filter(|id| !desired.routes.contains_key(id)).copied().collect();
    for id in stale {
        maps.route().remove(&id)?;
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

    fn insert_route(&mut self, id: u64, rv: RouteVal, b: Vec<Backend>) -> Option<(RouteVal, Vec<Backend>)> {
        self.routes.insert(id, (rv, b))
    }
}

fn delete_generation(maps: &mut dyn MapWriter, route: u64, rv: &RouteVal) -> Result<(), EbpfError> {
    for slot in 0..rv.count {
        maps.backend().remove(&BackendKey { route, generation: rv.generation, slot })?;
    }
    if rv.flags & layout::ROUTE_MAGLEV != 0 {
        maps.maglev().remove(&MaglevKey { route, generation: rv.generation, pad: 0 })?;
    }
    Ok(())
}

/// Removes backend slots and Maglev tables that no route points to (left
/// by a crash between writing and flipping). Full syncs only: it walks the maps.
pub fn collect_garbage(maps: &mut dyn MapWriter, current: &Programmed) -> Result<usize, EbpfError> {
    let live =
        |route: u64, generation: u32| current.routes.get(&route).is_some_and(|(rv, _)| rv.generation == generation);
    let stray: Vec<BackendKey> = maps
        .backend()
        .entries()?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            !current.routes.get(&k.route).is_some_and(|(rv, _)| rv.generation == k.generation && k.slot < rv.count)
        })
        .collect();
    let stray_maglev: Vec<MaglevKey> =
        maps.maglev().entries()?.into_iter().map(|(k, _)| k).filter(|k| !live(k.route, k.generation)).collect();
    let n = stray.len() + stray_maglev.len();
    for k in stray {
        let _ = maps.backend().remove(&k);
    }
    for k in stray_maglev {
        let _ = maps.maglev().remove(&k);
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
pub fn flush_stale_udp(maps: &mut dyn MapWriter, stale: &StaleIndex) -> Result<usize, EbpfError> {
    if stale.is_empty() {
        return Ok(0);
    }
    let is_stale = |flow: Option<(SocketAddr, SocketAddr)>| flow.is_some_and(|(dst, reply)| stale.matches(dst, reply));
    let doomed: Vec<CtKey> =
        maps.ct().entries()?.into_iter().filter(|(k, v)| is_stale(ct_flow(k, v))).map(|(k, _)| k).collect();
    let mut n = 0;
    for k in doomed {
        if maps.ct().remove(&k)? {
            n += 1;
        }
    }
    // The socket map is best effort: an entry that cannot be read or
    // deleted only delays the socket's next choice to the LRU.
    let sockets: Vec<SockKey> = maps
        .sock()
        .entries()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| is_stale(sock_flow(k, v)))
        .map(|(k, _)| k)
        .collect();
    for k in sockets {
        if maps.sock().remove(&k).unwrap_or(false) {
            n += 1;
        }
    }
    Ok(n)
}

/// Writes the node's addresses (those accepting NodePorts flagged).
pub fn set_node_addrs(maps: &mut dyn MapWriter, want: &BTreeMap<Addr, u32>) -> Result<(), EbpfError> {
    let have: BTreeMap<Addr, u32> = maps.node_addrs().entries()?.into_iter().collect();
    for (k, v) in want {
        if have.get(k) != Some(v) {
            maps.node_addrs().insert(*k, *v)?;
        }
    }
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        let _ = maps.node_addrs().remove(k);
    }
    Ok(())
}

pub fn set_config(maps: &mut dyn MapWriter, cfg: &Config) -> Result<(), EbpfError> {
    if maps.config().get(&0).ok().flatten().as_ref() == Some(cfg) {
        return Ok(());
    }
    maps.config().insert(0, *cfg)
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
            vec![slice_of(
                "dns-1",
                "dns",
                5353,
                "UDP",
                vec![endpoint("10.244.1.6").node(NODE), endpoint("10.244.2.6")],
            )],
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
            let k = layout::CtKey {
                src: client,
                dst: frontend,
                sport: 40000u16.to_be(),
                dport: 53u16.to_be(),
                proto,
                pad: [0; 3],
            };
            let v = layout::CtVal {
                nat: backend,
                nat_port: 5353u16.to_be(),
                dir: layout::CT_FORWARD,
                route: 7,
                ..Default::default()
            };
            (k, v)
        };
        let reverse = |backend: Addr| {
            let k = layout::CtKey {
                src: backend,
                dst: client,
                sport: 5353u16.to_be(),
                dport: 40000u16.to_be(),
                proto: 17,
                pad: [0; 3],
            };
            let v = layout::CtVal {
                nat: frontend,
                nat_port: 53u16.to_be(),
                nat2: client,
                nat2_port: 40000u16.to_be(),
                dir: layout::CT_REVERSE,
                route: 7,
                ..Default::default()
            };
            (k, v)
        };
        let ct_stale =
            |(k, v): (layout::CtKey, layout::CtVal)| ct_flow(&k, &v).is_some_and(|(d, r)| stale.matches(d, r));
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

    use crate::fake::{FakeMaps, Write};

    fn dns_snapshot(endpoints: &[&str]) -> std::sync::Arc<proxy_core::Snapshot> {
        use proxy_core::testing::{ServiceBuilder, endpoint};
        let web = ServiceBuilder::new("default", "web", "10.96.0.10").port("", 80, "TCP").build();
        let dns = ServiceBuilder::new("default", "dns", "10.96.0.53").port("", 53, "UDP").build();
        let eps = endpoints.iter().map(|ip| endpoint(ip).node(NODE)).collect();
        snapshot(
            vec![web, dns],
            vec![
                slice_of("web-1", "web", 8080, "TCP", vec![endpoint("10.244.1.9").node(NODE)]),
                slice_of("dns-1", "dns", 5353, "UDP", eps),
            ],
            masq(),
        )
    }

    /// What apply writes into the maps reads back as what the plans say.
    #[test]
    fn applied_maps_read_back_as_the_expected_state() {
        let snap = sample_snapshot();
        let desired = render(&snap, &RenderOptions::default());
        let mut fake = FakeMaps::default();
        let mut current = Programmed::default();
        apply(&mut fake, &mut current, &desired).expect("apply");
        let read = Programmed::read(&mut fake).expect("read");
        assert_eq!(read, current, "what apply says it wrote is what the maps hold");
        let diff = snap.expected_state().diff(&read.to_state());
        assert!(diff.is_empty(), "{}", diff.iter().map(|d| format!("{d}\n")).collect::<String>());
        // Applying the same state again writes nothing.
        fake.take_writes();
        apply(&mut fake, &mut current, &desired).expect("apply again");
        assert_eq!(fake.take_writes(), []);
    }

    /// A changed route gets its new backend slots first, then one write of
    /// its route value flips readers to them, then the old slots go; the
    /// frontends pointing to it are not written at all.
    #[test]
    fn a_changed_route_flips_between_its_new_and_old_slots() {
        let opts = RenderOptions::default();
        let mut fake = FakeMaps::default();
        let mut current = Programmed::default();
        apply(&mut fake, &mut current, &render(&dns_snapshot(&["10.244.1.5", "10.244.1.6"]), &opts)).expect("apply");
        fake.take_writes();
        let stats =
            apply(&mut fake, &mut current, &render(&dns_snapshot(&["10.244.1.7"]), &opts)).expect("apply change");
        assert_eq!((stats.routes_written, stats.frontends_written), (1, 0));
        let writes = fake.take_writes();
        let pos = |w: Write| writes.iter().position(|x| *x == w).unwrap_or(usize::MAX);
        let last = |w: Write| writes.iter().rposition(|x| *x == w).unwrap_or(0);
        assert!(last(Write::Insert("swy_backend")) < pos(Write::Insert("swy_route")), "{writes:?}");
        assert!(pos(Write::Insert("swy_route")) < pos(Write::Remove("swy_backend")), "{writes:?}");
        assert_eq!(writes.iter().filter(|w| **w == Write::Remove("swy_backend")).count(), 2, "{writes:?}");
        assert!(!writes.iter().any(|w| matches!(w, Write::Insert("swy_svc") | Write::Remove("swy_svc"))));
        assert_eq!(fake.backend.entries.len(), 2, "one slot for dns, one for web: {:?}", fake.backend.entries);
    }

    /// A state that cannot fit is refused before anything is written.
    #[test]
    fn a_full_map_is_refused_up_front() {
        let desired = render(&sample_snapshot(), &RenderOptions::default());
        let fake = FakeMaps::with_capacity(2);
        let err = check_capacity(&fake, &needs(&desired)).expect_err("too small");
        assert!(matches!(err, EbpfError::Full { capacity: 2, .. }), "{err:?}");
        assert_eq!(fake.take_writes(), []);
        // And a write past the capacity fails as the kernel's E2BIG does.
        let mut fake = FakeMaps::with_capacity(2);
        let err = apply(&mut fake, &mut Programmed::default(), &desired).expect_err("full");
        assert!(matches!(err, EbpfError::Full { .. }), "{err:?}");
    }

    /// The stale flows the core names leave the maps; the rest stay.
    #[test]
    fn stale_udp_flows_leave_the_maps() {
        let (before, after) = (dns_snapshot(&["10.244.1.5", "10.244.1.6"]), dns_snapshot(&["10.244.1.6"]));
        let request = proxy_core::SyncRequest { snapshot: after, changed: Default::default(), full: true };
        let work = proxy_core::stale::stale_udp_of_sync(IpFamily::ALL, Some(&before), &request, false);
        let addr = |s: &str| Addr::from(s.parse::<std::net::IpAddr>().expect("ip"));
        let (client, frontend) = (addr("10.244.2.2"), addr("10.96.0.53"));
        let mut fake = FakeMaps::default();
        for (i, backend) in [addr("10.244.1.5"), addr("10.244.1.6")].into_iter().enumerate() {
            let sport = (40000 + i as u16).to_be();
            let fwd = layout::CtKey { src: client, dst: frontend, sport, dport: 53u16.to_be(), proto: 17, pad: [0; 3] };
            let rev = layout::CtKey {
                src: backend,
                dst: client,
                sport: 5353u16.to_be(),
                dport: sport,
                proto: 17,
                pad: [0; 3],
            };
            let val = |dir, nat, nat_port| layout::CtVal { nat, nat_port, dir, route: 3, ..Default::default() };
            fake.ct.entries.insert(fwd, val(layout::CT_FORWARD, backend, 5353u16.to_be()));
            fake.ct.entries.insert(rev, val(layout::CT_REVERSE, frontend, 53u16.to_be()));
            let sk = layout::SockKey { cookie: i as u64, addr: frontend, port: 53u16.to_be(), dir: 0, pad: [0; 5] };
            fake.sock
                .entries
                .insert(sk, layout::SockVal { addr: backend, port: 5353u16.to_be(), ..Default::default() });
        }
        let n = flush_stale_udp(&mut fake, &StaleIndex::new(work.values().flatten())).expect("flush");
        assert_eq!(n, 3, "two conntrack entries and one socket choice");
        let kept = addr("10.244.1.6");
        assert!(fake.ct.entries.iter().all(|(k, v)| k.src == kept || v.nat == kept), "{:?}", fake.ct.entries);
        assert!(fake.sock.entries.values().all(|v| v.addr == kept));
    }

    /// Slots no route points to (a crash between writing and flipping) go.
    #[test]
    fn stray_backend_slots_are_collected() {
        let desired = render(&dns_snapshot(&["10.244.1.5"]), &RenderOptions::default());
        let mut fake = FakeMaps::default();
        let mut current = Programmed::default();
        apply(&mut fake, &mut current, &desired).expect("apply");
        let (route, _) = current.routes.iter().next().expect("a route");
        fake.backend.entries.insert(BackendKey { route: *route, generation: 99, slot: 0 }, Backend::default());
        assert_eq!(collect_garbage(&mut fake, &current).expect("gc"), 1);
        assert_eq!(collect_garbage(&mut fake, &current).expect("gc"), 0);
        assert_eq!(Programmed::read(&mut fake).expect("read"), current);
    }
}
