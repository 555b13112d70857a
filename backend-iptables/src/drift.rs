//! Drift: what someone else changed in what we own, found by comparing
//! what `iptables-save` shows with what this process wrote.
//!
//! A full sync request (every sync period) takes the kernel as witness:
//! [`crate::sync::reconcile_payload`] compares every chain of ours, the hooks
//! in the built-in chains and the jumps into our chains with the desired
//! state, rewrites only what differs, and fills a [`Drift`] with what was
//! changed behind our back (as opposed to what the plans changed since the
//! last sync). The dataplane logs it and reports it in `SyncOutcome::repairs`.

use std::collections::HashMap;

use proxy_core::{IpFamily, SyncOutcome};
use tracing::warn;

use crate::render::DesiredChain;
use crate::restore::Table;

/// Repair kinds, as reported in `SyncOutcome::repairs` and the
/// `switchyard_drift_repairs_total{kind}` metric.
pub mod kind {
    /// One of our chains was missing (deleted) and was created again.
    pub const CHAIN: &str = "chain";
    /// A rule of one of our chains was missing, changed or added; counted per rule.
    pub const RULE: &str = "rule";
    /// Our jump from a built-in chain (nat PREROUTING, OUTPUT, POSTROUTING;
    /// filter INPUT, FORWARD, OUTPUT) was missing and was inserted again.
    pub const HOOK_JUMP: &str = "hook jump";
    /// A jump into our chains from a chain that is not ours (other than our
    /// hooks, or a duplicate of one) was deleted.
    pub const STRAY_JUMP: &str = "stray jump";
    /// A chain with our prefix that we neither wrote nor want was deleted.
    pub const STRAY_CHAIN: &str = "stray chain";
    /// A sysctl we set (`route_localnet` for localhost node ports) was reset and set again.
    pub const SYSCTL: &str = "sysctl";
}

/// What differed between the kernel and what this process wrote, by object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Our chains, unchanged by the plans since we wrote them, missing from the kernel.
    pub missing_chains: Vec<(Table, String)>,
    /// Our chains, unchanged by the plans since we wrote them, whose rules
    /// differ, with how many rules differ.
    pub changed_chains: Vec<(Table, String, usize)>,
    /// Built-in chains without our jump: (table, built-in chain).
    pub missing_hooks: Vec<(Table, &'static str)>,
    /// Chains that are not ours holding a jump into ours that we did not put there.
    pub stray_jumps: Vec<(Table, String)>,
    /// Chains with our prefix that we neither wrote nor want.
    pub stray_chains: Vec<(Table, String)>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.missing_chains.is_empty()
            && self.changed_chains.is_empty()
            && self.missing_hooks.is_empty()
            && self.stray_jumps.is_empty()
            && self.stray_chains.is_empty()
    }

    /// Repairs by kind.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        vec![
            (kind::CHAIN, self.missing_chains.len() as u64),
            (kind::RULE, self.changed_chains.iter().map(|c| c.2 as u64).sum()),
            (kind::HOOK_JUMP, self.missing_hooks.len() as u64),
            (kind::STRAY_JUMP, self.stray_jumps.len() as u64),
            (kind::STRAY_CHAIN, self.stray_chains.len() as u64),
        ]
    }

    /// Adds the repairs to a sync's outcome.
    pub fn record(&self, outcome: &mut SyncOutcome) {
        for (kind, n) in self.counts() {
            outcome.repaired(kind, n);
        }
    }

    /// One warning per kind of drift found, naming the chains (the first
    /// few: a flushed table would otherwise log a thousand names).
    pub fn log(&self, family: IpFamily) {
        const SHOWN: usize = 8;
        fn names<'a>(it: impl Iterator<Item = String> + 'a) -> String {
            let all: Vec<String> = it.collect();
            let mut s = all.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if all.len() > SHOWN {
                s.push_str(&format!(" and {} more", all.len() - SHOWN));
            }
            s
        }
        if !self.missing_hooks.is_empty() {
            let hooks = names(self.missing_hooks.iter().map(|(t, c)| format!("{t} {c}")));
            warn!(ip_family = %family, hooks = %hooks, "our jump from a built-in chain was missing (deleted by someone else); inserted again");
        }
        if !self.missing_chains.is_empty() {
            let chains = names(self.missing_chains.iter().map(|(t, c)| format!("{t} {c}")));
            warn!(ip_family = %family, count = self.missing_chains.len(), chains = %chains, "chains of ours were missing (deleted by someone else); created again");
        }
        if !self.changed_chains.is_empty() {
            let chains = names(self.changed_chains.iter().map(|(t, c, n)| format!("{t} {c} ({n} rules)")));
            warn!(ip_family = %family, count = self.changed_chains.len(), chains = %chains, "rules of our chains were changed by someone else; rewritten");
        }
        if !self.stray_jumps.is_empty() {
            let chains = names(self.stray_jumps.iter().map(|(t, c)| format!("{t} {c}")));
            warn!(ip_family = %family, count = self.stray_jumps.len(), chains = %chains, "jumps into our chains that we did not write; deleted");
        }
        if !self.stray_chains.is_empty() {
            let chains = names(self.stray_chains.iter().map(|(t, c)| format!("{t} {c}")));
            warn!(ip_family = %family, count = self.stray_chains.len(), chains = %chains, "chains with our prefix that we did not write; deleted");
        }
    }
}

/// How many rules of `kernel` differ from `desired`'s: 0 when the kernel
/// holds exactly the desired rules in order, otherwise at least 1 (the
/// larger of missing and extra rules, counted as multisets: a changed rule
/// is one, a reordered chain is one).
///
/// Rules are compared as text: we write rules in the form `iptables-save`
/// prints them (the netns tests check it for both implementations), with a
/// word-by-word comparison as a fallback for quoting differences.
pub fn differing_rules(kernel: &[String], desired: &DesiredChain<'_>) -> usize {
    if kernel.len() == desired.rule_count() && kernel.iter().zip(desired.rules()).all(|(k, d)| same_rule(k, d)) {
        return 0;
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for d in desired.rules() {
        *counts.entry(d).or_insert(0) += 1;
    }
    for k in kernel {
        *counts.entry(k.as_str()).or_insert(0) -= 1;
    }
    let missing: i64 = counts.values().filter(|n| **n > 0).sum();
    let extra: i64 = -counts.values().filter(|n| **n < 0).sum::<i64>();
    (missing.max(extra) as usize).max(1)
}

/// Whether two rule texts say the same: equal, or equal word by word.
pub fn same_rule(a: &str, b: &str) -> bool {
    a == b || matches!((crate::parse::tokenize(a), crate::parse::tokenize(b)), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::render::ChainBody;

    fn chain(rules: &[&str]) -> DesiredChain<'static> {
        DesiredChain {
            table: Table::Nat,
            name: Cow::Borrowed("SWITCHYARD-X"),
            hash: 0,
            body: ChainBody::Owned(rules.iter().map(|r| r.to_string()).collect()),
        }
    }

    fn strings(rules: &[&str]) -> Vec<String> {
        rules.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn counts_rules_that_differ() {
        let want = chain(&["-j A", "-j B", "-j C"]);
        assert_eq!(differing_rules(&strings(&["-j A", "-j B", "-j C"]), &want), 0);
        // Quoting that iptables-save may print differently.
        assert_eq!(
            differing_rules(
                &strings(&["-j A", "-m comment --comment \"x\" -j B", "-j C"]),
                &chain(&["-j A", "-m comment --comment x -j B", "-j C"])
            ),
            0
        );
        assert_eq!(differing_rules(&strings(&[]), &want), 3, "flushed");
        assert_eq!(differing_rules(&strings(&["-j A", "-j C"]), &want), 1, "one deleted");
        assert_eq!(differing_rules(&strings(&["-j A", "-j X", "-j C"]), &want), 1, "one changed");
        assert_eq!(differing_rules(&strings(&["-j A", "-j B", "-j C", "-j D"]), &want), 1, "one added");
        assert_eq!(differing_rules(&strings(&["-j C", "-j B", "-j A"]), &want), 1, "reordered");
    }
}
