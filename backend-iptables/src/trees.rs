//! The dispatch trees of one family, kept between syncs so that a partial
//! sync costs what changed, not what exists (issue 16: rebuilding and
//! comparing every tree on each partial sync walked every Service, 8–25 ms
//! at 10,000 Services).
//!
//! A tree's shape (which chains exist, their dispatch rules) depends only on
//! its entries' keys and weights (rule counts); a leaf's content on its
//! entries' rules. A change that keeps a Service's keys and weights, such as
//! an endpoint replaced by another (the usual change under churn), only
//! rewrites the leaves that hold the changed entries: each is found by
//! binary search and its hash recomputed from the few entries it holds.
//! Anything else (a frontend added or removed, a Service's endpoint count
//! changing, a hairpin entry, whose duplicates are dropped) marks the tree
//! stale, and the next refresh rebuilds it from every Service, as the full
//! render does.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use proxy_core::ServiceName;

use crate::render::{ChainBody, DesiredChain, RenderConfig, ServiceRules, TreeId};
use crate::tree::{self, Body, TreeChain, TreeEntry};

/// Where an entry comes from: its key, its Service and its position among
/// that Service's entries of the tree. Ordered as a tree orders its entries
/// (by key, then as the Services are ordered, then by position).
type Slot = (u128, ServiceName, u32);

/// The six trees of one family.
#[derive(Debug, Default)]
pub struct Trees {
    trees: [TreeCache; 6],
}

#[derive(Debug, Default)]
struct TreeCache {
    /// False until built, and after a change that may move its shape.
    built: bool,
    /// The entries in tree order and where each comes from.
    slots: Vec<Slot>,
    entries: Vec<TreeEntry>,
    /// Built from `entries`, root first.
    chains: Vec<TreeChain>,
    /// (first entry position, chain index) of every leaf, by position.
    leaves: Vec<(usize, usize)>,
    /// Leaves whose hash is out of date.
    dirty: BTreeSet<usize>,
    /// Rules after the root's own (the node-port hook).
    tail: Vec<String>,
}

/// What a refresh changed in one tree.
#[derive(Debug, Default)]
pub enum Refresh {
    #[default]
    Unchanged,
    /// These chains (indices) may have new content; the shape is the same.
    Leaves(Vec<usize>),
    /// Rebuilt: any chain may have changed; these names are gone.
    Rebuilt { gone: Vec<String> },
}

impl TreeCache {
    fn leaf_of(&self, position: usize) -> Option<usize> {
        let i = self.leaves.partition_point(|(start, _)| *start <= position);
        i.checked_sub(1).map(|i| self.leaves[i].1)
    }

    fn update(&mut self, id: TreeId, name: &ServiceName, old: &[crate::render::Entry], new: &[crate::render::Entry]) {
        let same = |a: &crate::render::Entry, b: &crate::render::Entry| {
            a.key == b.key && a.hash == b.hash && a.rules.len() == b.rules.len()
        };
        if old.len() == new.len() && old.iter().zip(new).all(|(a, b)| same(a, b)) {
            return;
        }
        let same_shape = old.len() == new.len()
            && old.iter().zip(new).all(|(a, b)| a.key == b.key && a.rules.len() == b.rules.len());
        if !self.built || !same_shape || id == TreeId::Hairpin {
            self.built = false;
            return;
        }
        for (i, (a, b)) in old.iter().zip(new).enumerate() {
            if a.hash == b.hash {
                continue;
            }
            let slot = (a.key, name.clone(), i as u32);
            match self.slots.binary_search(&slot).ok().and_then(|p| Some((p, self.leaf_of(p)?))) {
                Some((p, leaf)) => {
                    self.entries[p].hash = b.hash;
                    self.dirty.insert(leaf);
                }
                None => {
                    self.built = false;
                    return;
                }
            }
        }
    }

    fn rebuild(&mut self, id: TreeId, cfg: &RenderConfig, services: &BTreeMap<ServiceName, ServiceRules>) -> Refresh {
        let t = id.index();
        let mut seen_hairpin = HashSet::new();
        let mut all: Vec<(Slot, TreeEntry)> = Vec::new();
        for (name, s) in services {
            for (i, e) in s.entries[t].iter().enumerate() {
                if id == TreeId::Hairpin && !seen_hairpin.insert(e.key) {
                    continue;
                }
                all.push((
                    (e.key, name.clone(), i as u32),
                    TreeEntry { key: e.key, weight: e.rules.len(), hash: e.hash },
                ));
            }
        }
        // Services come in order and positions ascend: a stable sort by key
        // is the slot order.
        all.sort_by_key(|(s, _)| s.0);
        let (slots, entries): (Vec<Slot>, Vec<TreeEntry>) = all.into_iter().unzip();
        let chains = tree::build(&cfg.tree_spec(id), &entries);
        let old: HashSet<&str> = if self.chains.is_empty() {
            HashSet::new()
        } else {
            let new: HashSet<&str> = chains.iter().map(|c| c.name.as_str()).collect();
            self.chains.iter().map(|c| c.name.as_str()).filter(|n| !new.contains(n)).collect()
        };
        let gone = old.into_iter().map(String::from).collect();
        self.leaves = chains
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match &c.body {
                Body::Leaf { entries, .. } => Some((entries.start, i)),
                Body::Dispatch(_) => None,
            })
            .collect();
        self.leaves.sort_unstable();
        self.tail = cfg.tree_tail(id);
        self.slots = slots;
        self.entries = entries;
        self.chains = chains;
        self.dirty.clear();
        self.built = true;
        Refresh::Rebuilt { gone }
    }

    fn hash_of(&self, index: usize) -> u64 {
        let c = &self.chains[index];
        if index != 0 {
            return c.hash;
        }
        let mut h = DefaultHasher::new();
        c.hash.hash(&mut h);
        self.tail.hash(&mut h);
        h.finish()
    }

    fn rule_count(&self) -> usize {
        self.chains.iter().map(TreeChain::rule_count).sum::<usize>() + self.tail.len()
    }
}

impl Trees {
    /// Records a Service's new render (`None`: gone) against its previous one.
    pub fn update(&mut self, name: &ServiceName, old: Option<&ServiceRules>, new: Option<&ServiceRules>) {
        for id in TreeId::ALL {
            let t = id.index();
            let o = old.map_or(&[][..], |r| &r.entries[t][..]);
            let n = new.map_or(&[][..], |r| &r.entries[t][..]);
            self.trees[t].update(id, name, o, n);
        }
    }

    /// Brings every tree up to date with `services` (which `update` was told
    /// about); says per tree what changed.
    pub fn refresh(&mut self, cfg: &RenderConfig, services: &BTreeMap<ServiceName, ServiceRules>) -> [Refresh; 6] {
        let mut out: [Refresh; 6] = Default::default();
        for id in TreeId::ALL {
            let cache = &mut self.trees[id.index()];
            out[id.index()] = if !cache.built {
                cache.rebuild(id, cfg, services)
            } else if cache.dirty.is_empty() {
                Refresh::Unchanged
            } else {
                let dirty = std::mem::take(&mut cache.dirty);
                for &leaf in &dirty {
                    let c = &mut cache.chains[leaf];
                    if let Body::Leaf { entries, .. } = &c.body {
                        c.hash = tree::leaf_hash(&cache.entries[entries.clone()]);
                    }
                }
                Refresh::Leaves(dirty.into_iter().collect())
            };
        }
        out
    }

    /// One chain of a tree as a desired chain, its rules borrowed from the render cache.
    pub fn chain<'a>(
        &'a self,
        id: TreeId,
        index: usize,
        services: &'a BTreeMap<ServiceName, ServiceRules>,
    ) -> DesiredChain<'a> {
        let cache = &self.trees[id.index()];
        let c = &cache.chains[index];
        let mut groups: Vec<&'a [String]> = match &c.body {
            Body::Leaf { entries, .. } => cache.slots[entries.clone()]
                .iter()
                .map(|(_, svc, i)| {
                    // `update` saw every change to `services`, so the slot exists.
                    services.get(svc).and_then(|s| s.entries[id.index()].get(*i as usize)).map_or(&[][..], |e| &e.rules)
                })
                .collect(),
            Body::Dispatch(rules) => vec![&rules[..]],
        };
        if index == 0 {
            groups.push(&cache.tail);
        }
        DesiredChain {
            table: id.table(),
            name: Cow::Borrowed(&c.name),
            hash: cache.hash_of(index),
            body: ChainBody::Tree(groups),
        }
    }

    /// Every chain of every tree.
    pub fn all<'a>(
        &'a self,
        services: &'a BTreeMap<ServiceName, ServiceRules>,
    ) -> impl Iterator<Item = DesiredChain<'a>> + 'a {
        TreeId::ALL
            .into_iter()
            .flat_map(move |id| (0..self.trees[id.index()].chains.len()).map(move |i| self.chain(id, i, services)))
    }

    /// The chains a refresh changed (content not as `written` records it),
    /// and the names it removed. Only those are materialized: gathering a
    /// leaf's rules costs a lookup per entry, and a rebuilt tree has as many
    /// entries as Services.
    pub fn changed<'a>(
        &'a self,
        refreshed: &'a [Refresh; 6],
        services: &'a BTreeMap<ServiceName, ServiceRules>,
        written: &crate::sync::Written,
        out: &mut Vec<DesiredChain<'a>>,
        gone: &mut Vec<(crate::restore::Table, String)>,
    ) {
        for id in TreeId::ALL {
            let cache = &self.trees[id.index()];
            let differs =
                |i: &usize| written.get(&(id.table(), cache.chains[*i].name.clone())) != Some(&cache.hash_of(*i));
            match &refreshed[id.index()] {
                Refresh::Unchanged => {}
                Refresh::Leaves(chains) => {
                    out.extend(chains.iter().filter(|i| differs(i)).map(|i| self.chain(id, *i, services)))
                }
                Refresh::Rebuilt { gone: names } => {
                    out.extend((0..cache.chains.len()).filter(differs).map(|i| self.chain(id, i, services)));
                    gone.extend(names.iter().map(|n| (id.table(), n.clone())));
                }
            }
        }
    }

    /// (rules, chains) per table (nat, filter).
    pub fn counts(&self) -> [(usize, usize); 2] {
        let mut out = [(0, 0); 2];
        for id in TreeId::ALL {
            let t = &self.trees[id.index()];
            let slot = &mut out[usize::from(id.table() != crate::restore::Table::Nat)];
            slot.0 += t.rule_count();
            slot.1 += t.chains.len();
        }
        out
    }
}
