//! Turning the desired chains into restore payloads: full and partial.
//!
//! - A **full** payload is built against what `iptables-save` shows: every
//!   desired chain is declared (flushed) and rewritten, our chains that are
//!   not desired are deleted, and the jumps into our chains from other
//!   chains are made exactly the hooks we want (stale or duplicate jumps
//!   deleted, missing ones inserted at the top).
//! - A **witness** payload (a periodic full request) is built the same way
//!   but rewrites only the chains whose rules in the kernel differ from the
//!   desired ones; with no drift and no change it is empty (no commit). What
//!   differs from what this process wrote is reported as [`Drift`].
//! - A **partial** payload is built against what this process last wrote:
//!   only chains whose content hash changed are rewritten, chains no longer
//!   desired are deleted. It starts by deleting and re-adding the canary
//!   rule, so if anyone flushed the table the whole restore fails and the
//!   caller falls back to a full sync.
//!
//! Payloads borrow the chains' rules from the render cache and are written
//! straight into `iptables-restore`'s stdin ([`RestoreInput`]): at 10,000
//! Services × 10 endpoints a full payload is about 50 MB of text, which used
//! to be held twice (the commands, then the rendered copy) on top of the
//! cache it was copied from.

use std::collections::{BTreeSet, HashMap};
use std::io;

use crate::drift::{Drift, differing_rules, same_rule};
use crate::names;
use crate::parse::{Ruleset, parse_rule};
use crate::render::{DesiredChain, Hook, canary_rule, hooks};
use crate::restore::{RestoreInput, RestorePayload, Table};

/// The tables we program.
pub const TABLES: [Table; 2] = [Table::Nat, Table::Filter];

/// What this process last wrote: chain → content hash.
pub type Written = HashMap<(Table, String), u64>;

/// Records the chains of `desired` as written.
pub fn written(desired: &[DesiredChain<'_>]) -> Written {
    desired.iter().map(|c| ((c.table, c.name.to_string()), c.hash)).collect()
}

/// An `iptables-restore --noflush` payload whose chain contents are
/// borrowed from the desired chains. It writes exactly what a
/// [`RestorePayload`] with the same commands renders: per table (nat, then
/// filter, empty ones left out) the declared chains, the commands before
/// the chains (canary, stale jumps), every rule of the written chains, the
/// commands after them (hooks), then the `-X` of deleted chains.
#[derive(Debug)]
pub struct Payload<'a> {
    sections: Vec<Section<'a>>,
}

#[derive(Debug)]
struct Section<'a> {
    table: Table,
    /// Commands before the written chains' rules (full lines).
    head: RestorePayload,
    chains: Vec<&'a DesiredChain<'a>>,
    /// Commands after the written chains' rules (full lines).
    tail: RestorePayload,
    deleted: Vec<String>,
}

impl<'a> Payload<'a> {
    fn new() -> Self {
        Payload {
            sections: TABLES
                .iter()
                .map(|t| Section {
                    table: *t,
                    head: RestorePayload::new(),
                    chains: Vec::new(),
                    tail: RestorePayload::new(),
                    deleted: Vec::new(),
                })
                .collect(),
        }
    }

    fn section(&mut self, table: Table) -> &mut Section<'a> {
        let i = TABLES.iter().position(|t| *t == table).unwrap_or(0);
        &mut self.sections[i]
    }

    /// Whether the payload changes nothing.
    pub fn is_empty(&self) -> bool {
        self.sections.iter().all(Section::is_empty)
    }

    /// How many tables it changes: each is one kernel commit (one nf_tables
    /// transaction, one generation) when it changes anything.
    pub fn table_count(&self) -> usize {
        self.sections.iter().filter(|s| !s.is_empty()).count()
    }

    /// The payload as text (tests, tools).
    pub fn render(&self) -> String {
        self.to_text()
    }
}

impl Section<'_> {
    fn is_empty(&self) -> bool {
        self.head.is_empty() && self.chains.is_empty() && self.tail.is_empty() && self.deleted.is_empty()
    }

    fn commands(p: &RestorePayload, table: Table, out: &mut dyn io::Write) -> io::Result<()> {
        for s in p.sections().iter().filter(|s| s.table() == table) {
            s.write_commands(out)?;
        }
        Ok(())
    }
}

impl RestoreInput for Payload<'_> {
    fn write_to(&self, out: &mut dyn io::Write) -> io::Result<()> {
        for s in self.sections.iter().filter(|s| !s.is_empty()) {
            writeln!(out, "*{}", s.table.as_str())?;
            for c in &s.chains {
                writeln!(out, ":{} - [0:0]", c.name)?;
            }
            for c in &s.deleted {
                writeln!(out, ":{c} - [0:0]")?;
            }
            Section::commands(&s.head, s.table, out)?;
            for c in &s.chains {
                for r in c.rules() {
                    if r.is_empty() {
                        writeln!(out, "-A {}", c.name)?;
                    } else {
                        writeln!(out, "-A {} {r}", c.name)?;
                    }
                }
            }
            Section::commands(&s.tail, s.table, out)?;
            for c in &s.deleted {
                writeln!(out, "-X {c}")?;
            }
            out.write_all(b"COMMIT\n")?;
        }
        Ok(())
    }
}

/// Statistics of a payload, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadStats {
    pub chains_written: usize,
    pub chains_deleted: usize,
    pub rules_written: usize,
}

/// Which desired chains a reconcile payload writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Every desired chain (first sync, after a failure, the hourly full sync).
    All,
    /// Only the desired chains whose rules in the kernel differ from the
    /// desired ones (a periodic sync taking the kernel as witness).
    Differing,
}

/// A payload that makes the kernel's `current` tables exactly `desired`.
pub fn full_payload<'a>(current: &Ruleset, desired: &'a [DesiredChain<'a>]) -> (Payload<'a>, PayloadStats) {
    let (payload, stats, _) = reconcile_payload(current, desired, &Written::new(), Rewrite::All);
    (payload, stats)
}

/// A payload that makes the kernel's `current` tables exactly `desired`,
/// and what someone else changed since this process wrote `written`.
///
/// It writes the desired chains (all, or only those that differ from the
/// kernel), deletes our chains that are not desired, deletes the jumps into
/// our chains from chains that are not ours except exactly one hook per
/// built-in chain, and inserts missing hooks at the top. Drift is only
/// reported against what this process wrote (`written` not empty): a fresh
/// process converging from leftovers repairs nothing, and chains the plans
/// changed since the last sync are changes, not repairs.
pub fn reconcile_payload<'a>(
    current: &Ruleset,
    desired: &'a [DesiredChain<'a>],
    written: &Written,
    rewrite: Rewrite,
) -> (Payload<'a>, PayloadStats, Drift) {
    let mut payload = Payload::new();
    let mut stats = PayloadStats::default();
    let mut drift = Drift::default();
    let known = !written.is_empty();
    let wanted_hooks = hooks();
    for table in TABLES {
        let want: BTreeSet<&str> = desired.iter().filter(|c| c.table == table).map(|c| &*c.name).collect();
        let existing = current.table(table);
        // Jumps into our chains from chains that are not ours.
        let mut kept: Vec<&Hook> = Vec::new();
        if let Some(t) = existing {
            for (chain, c) in &t.chains {
                if names::is_ours(chain) {
                    continue;
                }
                // Most rules of other chains do not name ours: skip parsing them.
                for rule in c.rules.iter().filter(|r| r.contains(names::PREFIX)) {
                    let targets_ours =
                        parse_rule(rule).ok().and_then(|p| p.chain_target().map(names::is_ours)).unwrap_or(false);
                    if !targets_ours {
                        continue;
                    }
                    let hook =
                        wanted_hooks.iter().find(|h| h.table == table && h.chain == chain && same_rule(&h.rule, rule));
                    match hook {
                        Some(h) if !kept.contains(&h) => kept.push(h),
                        _ => {
                            payload.section(table).head.table(table).delete_text(chain, rule);
                            if known {
                                drift.stray_jumps.push((table, chain.clone()));
                            }
                        }
                    }
                }
            }
        }
        for chain in desired.iter().filter(|c| c.table == table) {
            let found = existing.and_then(|t| t.chain(&chain.name));
            let compare = known || rewrite == Rewrite::Differing;
            let differing = match found {
                _ if !compare => 1,
                None => chain.rule_count().max(1),
                Some(k) => differing_rules(&k.rules, chain),
            };
            if rewrite == Rewrite::All || differing > 0 {
                payload.section(table).chains.push(chain);
                stats.chains_written += 1;
                stats.rules_written += chain.rule_count();
            }
            let unchanged_since_written = known && written.get(&(table, chain.name.to_string())) == Some(&chain.hash);
            if unchanged_since_written && differing > 0 {
                match found {
                    None => drift.missing_chains.push((table, chain.name.to_string())),
                    Some(_) => drift.changed_chains.push((table, chain.name.to_string(), differing)),
                }
            }
        }
        for h in wanted_hooks.iter().filter(|h| h.table == table && !kept.contains(h)) {
            payload.section(table).tail.table(table).insert_text(h.chain, Some(1), &h.rule);
            if known {
                drift.missing_hooks.push((table, h.chain));
            }
        }
        if let Some(t) = existing {
            for chain in t.chains.keys().filter(|c| names::is_ours(c) && !want.contains(c.as_str())) {
                payload.section(table).deleted.push(chain.clone());
                stats.chains_deleted += 1;
                if known && !written.contains_key(&(table, chain.clone())) {
                    drift.stray_chains.push((table, chain.clone()));
                }
            }
        }
    }
    (payload, stats, drift)
}

/// A payload that moves the kernel from `written` (what we last wrote) to
/// `desired`, touching only chains that changed. Every table it touches
/// starts by re-adding its canary rule (so a flushed table fails the restore),
/// and `check_all` adds that check for tables with no change: each table in
/// a restore is one nf_tables commit, 10–20 ms on these machines even when
/// it changes one rule, so untouched tables are left out. (Periodic syncs
/// no longer use it: they compare the kernel instead, see [`reconcile_payload`].)
pub fn partial_payload<'a>(
    written: &Written,
    desired: &'a [DesiredChain<'a>],
    check_all: bool,
) -> (Payload<'a>, PayloadStats) {
    let want: BTreeSet<(Table, &str)> = desired.iter().map(|c| (c.table, &*c.name)).collect();
    let gone: Vec<(Table, String)> =
        written.keys().filter(|(t, n)| !want.contains(&(*t, n.as_str()))).cloned().collect();
    partial_payload_of(written, desired, &gone, check_all)
}

/// A partial payload from the chains that may have changed (`candidates`:
/// those whose hash differs from `written` are rewritten) and the chains no
/// longer desired (`gone`: deleted if we wrote them). What
/// [`partial_payload`] does for the whole desired state, for a caller that
/// knows what changed, so that its cost follows the change (issue 16).
pub fn partial_payload_of<'a>(
    written: &Written,
    candidates: &'a [DesiredChain<'a>],
    gone: &[(Table, String)],
    check_all: bool,
) -> (Payload<'a>, PayloadStats) {
    let mut payload = Payload::new();
    let mut stats = PayloadStats::default();
    let canary = canary_rule();
    let changed: Vec<&DesiredChain<'_>> =
        candidates.iter().filter(|c| written.get(&(c.table, c.name.to_string())) != Some(&c.hash)).collect();
    let mut gone: Vec<&(Table, String)> = gone.iter().filter(|k| written.contains_key(*k)).collect();
    gone.sort();
    gone.dedup();
    let touched: BTreeSet<Table> = changed.iter().map(|c| c.table).chain(gone.iter().map(|(t, _)| *t)).collect();
    for table in TABLES {
        if check_all || touched.contains(&table) {
            let section = payload.section(table).head.table(table);
            section.delete_text(names::CANARY, &canary);
            section.append_text(names::CANARY, &canary);
        }
    }
    for chain in changed {
        payload.section(chain.table).chains.push(chain);
        stats.chains_written += 1;
        stats.rules_written += chain.rule_count();
    }
    for (table, name) in gone {
        payload.section(*table).deleted.push(name.clone());
        stats.chains_deleted += 1;
    }
    (payload, stats)
}

/// Records what a partial payload of `candidates` and `gone` wrote.
pub fn record_partial(written: &mut Written, candidates: &[DesiredChain<'_>], gone: &[(Table, String)]) {
    for (table, name) in gone {
        written.remove(&(*table, name.clone()));
    }
    for c in candidates {
        written.insert((c.table, c.name.to_string()), c.hash);
    }
}
