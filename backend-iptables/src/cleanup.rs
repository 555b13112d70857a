//! Removing everything we own: our chains, and every rule in other chains
//! that jumps into them. Works from a fresh process: it reads `iptables-save`.

use proxy_core::IpFamily;

use crate::error::Error;
use crate::exec::Executor;
use crate::names;
use crate::parse::{Ruleset, parse_rule};
use crate::restore::RestorePayload;
use crate::sync::TABLES;

/// The payload that removes our chains and the jumps into them from `current`.
pub fn cleanup_payload(current: &Ruleset) -> RestorePayload {
    let mut payload = RestorePayload::new();
    for (table, t) in &current.tables {
        for (chain, c) in &t.chains {
            if names::is_ours(chain) {
                payload.table(*table).delete_chain(chain);
                continue;
            }
            for rule in &c.rules {
                if parse_rule(rule).ok().and_then(|p| p.chain_target().map(names::is_ours)).unwrap_or(false) {
                    payload.table(*table).delete_text(chain, rule);
                }
            }
        }
    }
    payload
}

/// Reads a family's nat and filter tables.
pub fn read(exec: &dyn Executor, family: IpFamily) -> Result<Ruleset, Error> {
    let mut rs = Ruleset::default();
    for table in TABLES {
        let text = exec.save(family, table)?;
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
    let current = read(exec, family)?;
    let payload = cleanup_payload(&current);
    if payload.is_empty() {
        return Ok(0);
    }
    exec.restore(family, &payload.render())?;
    Ok(current.tables.values().flat_map(|t| t.chains.keys()).filter(|c| names::is_ours(c)).count())
}
