//! Turning the desired chains into restore payloads: full and partial.
//!
//! - A **full** payload is built against what `iptables-save` shows: every
//!   desired chain is declared (flushed) and rewritten, our chains that are
//!   not desired are deleted, and the jumps into our chains from other
//!   chains are made exactly the hooks we want (stale or duplicate jumps
//!   deleted, missing ones inserted at the top).
//! - A **partial** payload is built against what this process last wrote:
//!   only chains whose content hash changed are rewritten, chains no longer
//!   desired are deleted. It starts by deleting and re-adding the canary
//!   rule, so if anyone flushed the table the whole restore fails and the
//!   caller falls back to a full sync.

use std::collections::{BTreeSet, HashMap};

use crate::names;
use crate::parse::{Ruleset, parse_rule};
use crate::render::{DesiredChain, Hook, canary_rule, hooks};
use crate::restore::{RestorePayload, Table};

/// The tables we program.
pub const TABLES: [Table; 2] = [Table::Nat, Table::Filter];

/// What this process last wrote: chain → content hash.
pub type Written = HashMap<(Table, String), u64>;

/// Records the chains of `desired` as written.
pub fn written(desired: &[DesiredChain<'_>]) -> Written {
    desired.iter().map(|c| ((c.table, c.name.to_string()), c.hash)).collect()
}

fn write_chain(payload: &mut RestorePayload, chain: &DesiredChain<'_>) {
    let section = payload.table(chain.table);
    section.declare_chain(&chain.name);
    for r in chain.rules() {
        section.append_text(&chain.name, r);
    }
}

/// Statistics of a payload, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadStats {
    pub chains_written: usize,
    pub chains_deleted: usize,
    pub rules_written: usize,
}

/// A payload that makes the kernel's `current` tables exactly `desired`.
pub fn full_payload(current: &Ruleset, desired: &[DesiredChain<'_>]) -> (RestorePayload, PayloadStats) {
    let mut payload = RestorePayload::new();
    let mut stats = PayloadStats::default();
    let wanted_hooks = hooks();
    for table in TABLES {
        payload.table(table);
        let want: BTreeSet<&str> = desired.iter().filter(|c| c.table == table).map(|c| &*c.name).collect();
        let existing = current.table(table);
        // Jumps into our chains from chains that are not ours.
        let mut kept: Vec<&Hook> = Vec::new();
        if let Some(t) = existing {
            for (chain, c) in &t.chains {
                if names::is_ours(chain) {
                    continue;
                }
                for rule in &c.rules {
                    let targets_ours =
                        parse_rule(rule).ok().and_then(|p| p.chain_target().map(names::is_ours)).unwrap_or(false);
                    if !targets_ours {
                        continue;
                    }
                    let hook =
                        wanted_hooks.iter().find(|h| h.table == table && h.chain == chain && same(&h.rule, rule));
                    match hook {
                        Some(h) if !kept.contains(&h) => kept.push(h),
                        _ => payload.table(table).delete_text(chain, rule),
                    }
                }
            }
        }
        for chain in desired.iter().filter(|c| c.table == table) {
            write_chain(&mut payload, chain);
            stats.chains_written += 1;
            stats.rules_written += chain.rule_count();
        }
        for h in wanted_hooks.iter().filter(|h| h.table == table && !kept.contains(h)) {
            payload.table(table).insert_text(h.chain, Some(1), &h.rule);
        }
        if let Some(t) = existing {
            for chain in t.chains.keys().filter(|c| names::is_ours(c) && !want.contains(c.as_str())) {
                payload.table(table).delete_chain(chain);
                stats.chains_deleted += 1;
            }
        }
    }
    (payload, stats)
}

fn same(a: &str, b: &str) -> bool {
    a == b || matches!((crate::parse::tokenize(a), crate::parse::tokenize(b)), (Ok(x), Ok(y)) if x == y)
}

/// A payload that moves the kernel from `written` (what we last wrote) to
/// `desired`, touching only chains that changed. Every table it touches
/// starts by re-adding its canary rule (so a flushed table fails the restore),
/// and `check_all` adds that check for tables with no change (periodic syncs):
/// each table in a restore is one nf_tables commit, 10–20 ms on these
/// machines even when it changes one rule, so untouched tables are left out.
pub fn partial_payload(
    written: &Written,
    desired: &[DesiredChain<'_>],
    check_all: bool,
) -> (RestorePayload, PayloadStats) {
    let mut payload = RestorePayload::new();
    let mut stats = PayloadStats::default();
    let canary = canary_rule();
    let want: BTreeSet<(Table, &str)> = desired.iter().map(|c| (c.table, &*c.name)).collect();
    let changed: Vec<&DesiredChain<'_>> =
        desired.iter().filter(|c| written.get(&(c.table, c.name.to_string())) != Some(&c.hash)).collect();
    let mut gone: Vec<&(Table, String)> = written.keys().filter(|(t, n)| !want.contains(&(*t, n.as_str()))).collect();
    gone.sort();
    let touched: BTreeSet<Table> = changed.iter().map(|c| c.table).chain(gone.iter().map(|(t, _)| *t)).collect();
    for table in TABLES {
        if check_all || touched.contains(&table) {
            let section = payload.table(table);
            section.delete_text(names::CANARY, &canary);
            section.append_text(names::CANARY, &canary);
        }
    }
    for chain in changed {
        write_chain(&mut payload, chain);
        stats.chains_written += 1;
        stats.rules_written += chain.rule_count();
    }
    for (table, name) in gone {
        payload.table(*table).delete_chain(name);
        stats.chains_deleted += 1;
    }
    (payload, stats)
}
