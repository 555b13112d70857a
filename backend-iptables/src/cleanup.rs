//! Removing everything we own: our chains, and every rule in other chains
//! that jumps into them. Works from a fresh process: it reads `iptables-save`.
//!
//! The same code removes another proxy's chains ([`remove_chains`], with its
//! own test for which chains are whose): the daemon uses it for kube-proxy's
//! `KUBE-*` leftovers when a node moves to switchyard.

use proxy_core::IpFamily;

use crate::error::Error;
use crate::exec::Executor;
use crate::names;
use crate::parse::{Ruleset, parse_rule};
use crate::restore::{RestorePayload, Table};
use crate::sync::TABLES;

/// The payload that removes our chains and the jumps into them from `current`.
pub fn cleanup_payload(current: &Ruleset) -> RestorePayload {
    removal_payload(current, &names::is_ours)
}

/// The payload that removes every chain `remove` picks, and every rule of
/// the chains it keeps (built-in or not) that jumps or goes to one of them.
pub fn removal_payload(current: &Ruleset, remove: &dyn Fn(&str) -> bool) -> RestorePayload {
    let mut payload = RestorePayload::new();
    for (table, t) in &current.tables {
        for (chain, c) in &t.chains {
            if remove(chain) {
                payload.table(*table).delete_chain(chain);
                continue;
            }
            for rule in &c.rules {
                if jump_target(rule).is_some_and(remove) {
                    payload.table(*table).delete_text(chain, rule);
                }
            }
        }
    }
    payload
}

/// The chain a rule jumps or goes to. Rules our parser does not know (another
/// proxy's matches) are read token by token: only the target matters here.
fn jump_target(rule: &str) -> Option<&str> {
    if let Ok(parsed) = parse_rule(rule)
        && let Some(target) = parsed.chain_target()
    {
        // The parsed rule borrows nothing from `rule`: find the same name in it.
        return rule.split_whitespace().find(|w| *w == target);
    }
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" || w == "--jump" || w == "--goto" {
            return words.next();
        }
    }
    None
}

/// Reads a family's nat and filter tables.
pub fn read(exec: &dyn Executor, family: IpFamily) -> Result<Ruleset, Error> {
    read_tables(exec, family, &TABLES)
}

/// Reads some of a family's tables.
pub fn read_tables(exec: &dyn Executor, family: IpFamily, tables: &[Table]) -> Result<Ruleset, Error> {
    let mut rs = Ruleset::default();
    for table in tables {
        let text = exec.save(family, *table)?;
        let parsed = Ruleset::parse_save(&text).map_err(|source| Error::Parse { table: table.to_string(), source })?;
        rs.tables.extend(parsed.tables);
    }
    Ok(rs)
}

/// Removes our chains and jumps of one family; returns how many chains went.
/// CLI equivalent: `iptables-save -t nat`, then `iptables -t nat -D <chain> <rule>`
/// for each jump into `SWITCHYARD-*`, `-F` and `-X` of each of ours (same for filter),
/// all in one `iptables-restore --noflush`.
pub fn cleanup_family(exec: &dyn Executor, family: IpFamily) -> Result<usize, Error> {
    Ok(remove_chains(exec, family, &TABLES, &names::is_ours)?.len())
}

/// Removes, in `tables` of one family, the chains `remove` picks and every
/// jump into them; returns the chains removed (table, name). One
/// `iptables-restore --noflush`: each table changes all at once or not at all.
pub fn remove_chains(
    exec: &dyn Executor,
    family: IpFamily,
    tables: &[Table],
    remove: &dyn Fn(&str) -> bool,
) -> Result<Vec<(Table, String)>, Error> {
    let current = read_tables(exec, family, tables)?;
    let payload = removal_payload(&current, remove);
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    exec.restore(family, &payload.render())?;
    Ok(current
        .tables
        .iter()
        .flat_map(|(table, t)| t.chains.keys().filter(|c| remove(c)).map(|c| (*table, c.clone())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABC - [0:0]\n:KEEP - [0:0]\n\
        -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
        -A OUTPUT -m addrtype --dst-type LOCAL -m weird --option x -j KUBE-SERVICES\n\
        -A OUTPUT -j KEEP\n\
        -A KEEP -g KUBE-SVC-ABC\n\
        -A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-ABC\nCOMMIT\n";

    #[test]
    fn another_proxys_chains_and_every_jump_into_them_go_and_nothing_else() {
        let rs = Ruleset::parse_save(SAVE).unwrap();
        let text = removal_payload(&rs, &|c: &str| c.starts_with("KUBE-")).render();
        for want in [
            "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-D OUTPUT -m addrtype --dst-type LOCAL -m weird --option x -j KUBE-SERVICES",
            "-D KEEP -g KUBE-SVC-ABC",
            "-X KUBE-SERVICES",
            "-X KUBE-SVC-ABC",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(!text.contains("-D OUTPUT -j KEEP") && !text.contains("-X KEEP"), "{text}");
    }

    #[test]
    fn targets_are_read_from_rules_the_parser_does_not_know() {
        assert_eq!(jump_target("-m unknown --thing 1 -j KUBE-X"), Some("KUBE-X"));
        assert_eq!(jump_target("-p tcp -j ACCEPT"), Some("ACCEPT"));
        assert_eq!(jump_target("-m comment --comment x"), None);
    }
}
