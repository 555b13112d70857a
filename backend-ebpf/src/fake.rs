//! An in-memory fake of the pinned maps ([`FakeMaps`], behind the same
//! [`MapWriter`] trait as the real ones): what `maps` writes, reads back,
//! diffs and deletes can be tested without a kernel, including the order
//! of writes (every write is logged) and full maps (a new key beyond the
//! capacity fails as the kernel's `E2BIG` does).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::EbpfError;
use crate::layout::{
    Addr, Backend, BackendKey, Config, CtKey, CtVal, MaglevKey, MaglevVal, RouteVal, SockKey, SockVal, SrcRangeData,
    SvcKey, SvcVal,
};
use crate::maps::{MapWriter, Table};

/// One write to a fake map, in the order it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Insert(&'static str),
    Remove(&'static str),
}

/// One map in memory.
#[derive(Clone, Debug)]
pub struct FakeTable<K, V> {
    pub name: &'static str,
    pub capacity: usize,
    pub entries: HashMap<K, V>,
    log: Arc<Mutex<Vec<Write>>>,
}

impl<K, V> FakeTable<K, V> {
    fn new(name: &'static str, capacity: usize, log: Arc<Mutex<Vec<Write>>>) -> Self {
        FakeTable { name, capacity, entries: HashMap::new(), log }
    }

    fn note(&self, w: Write) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(w);
    }
}

impl<K: Hash + Eq + Copy, V: Copy> Table<K, V> for FakeTable<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>, EbpfError> {
        Ok(self.entries.get(key).copied())
    }

    fn insert(&mut self, key: K, value: V) -> Result<(), EbpfError> {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            return Err(EbpfError::Full { map: self.name, capacity: self.capacity as u64 });
        }
        self.note(Write::Insert(self.name));
        self.entries.insert(key, value);
        Ok(())
    }

    fn remove(&mut self, key: &K) -> Result<bool, EbpfError> {
        let was = self.entries.remove(key).is_some();
        if was {
            self.note(Write::Remove(self.name));
        }
        Ok(was)
    }

    fn entries(&self) -> Result<Vec<(K, V)>, EbpfError> {
        Ok(self.entries.iter().map(|(k, v)| (*k, *v)).collect())
    }
}

/// The service maps in memory.
#[derive(Clone, Debug)]
pub struct FakeMaps {
    pub svc: FakeTable<SvcKey, SvcVal>,
    pub route: FakeTable<u64, RouteVal>,
    pub backend: FakeTable<BackendKey, Backend>,
    pub maglev: FakeTable<MaglevKey, MaglevVal>,
    pub ct: FakeTable<CtKey, CtVal>,
    pub sock: FakeTable<SockKey, SockVal>,
    pub node_addrs: FakeTable<Addr, u32>,
    pub cidrs: FakeTable<(u32, Addr), u32>,
    pub srcrange: FakeTable<(u32, SrcRangeData), u32>,
    pub config: FakeTable<u32, Config>,
    log: Arc<Mutex<Vec<Write>>>,
}

impl Default for FakeMaps {
    fn default() -> Self {
        FakeMaps::with_capacity(1 << 16)
    }
}

impl FakeMaps {
    /// Every map with room for `capacity` entries (`swy_config` has one).
    pub fn with_capacity(capacity: usize) -> FakeMaps {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = || log.clone();
        FakeMaps {
            svc: FakeTable::new("swy_svc", capacity, l()),
            route: FakeTable::new("swy_route", capacity, l()),
            backend: FakeTable::new("swy_backend", capacity, l()),
            maglev: FakeTable::new("swy_maglev", capacity, l()),
            ct: FakeTable::new("swy_ct", capacity, l()),
            sock: FakeTable::new("swy_sock", capacity, l()),
            node_addrs: FakeTable::new("swy_node_addrs", capacity, l()),
            cidrs: FakeTable::new("swy_cidrs", capacity, l()),
            srcrange: FakeTable::new("swy_srcrange", capacity, l()),
            config: FakeTable::new("swy_config", 1, l()),
            log,
        }
    }

    /// The writes since the last call, in order.
    pub fn take_writes(&self) -> Vec<Write> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl MapWriter for FakeMaps {
    fn capacity(&self, map: &str) -> u64 {
        let cap = match map {
            "swy_svc" => self.svc.capacity,
            "swy_route" => self.route.capacity,
            "swy_backend" => self.backend.capacity,
            "swy_maglev" => self.maglev.capacity,
            "swy_ct" => self.ct.capacity,
            "swy_sock" => self.sock.capacity,
            "swy_node_addrs" => self.node_addrs.capacity,
            "swy_cidrs" => self.cidrs.capacity,
            "swy_srcrange" => self.srcrange.capacity,
            "swy_config" => self.config.capacity,
            _ => 0,
        };
        cap as u64
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
