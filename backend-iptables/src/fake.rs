//! A fake iptables: applies restore payloads to in-memory tables with
//! `iptables-restore --noflush` semantics, and prints them as `iptables-save`
//! does. Tests of sync logic, cleanup and the packet tracer run on it without root.

use std::collections::BTreeMap;
use std::sync::Mutex;

use proxy_core::IpFamily;

use crate::error::Error;
use crate::exec::Executor;
use crate::parse::{Chain, Ruleset, TableRules, parse_rule, tokenize};
use crate::restore::Table;

/// In-memory tables of both families.
#[derive(Debug, Default)]
pub struct FakeIptables {
    state: Mutex<BTreeMap<IpFamily, Ruleset>>,
    log: Mutex<Vec<(IpFamily, String)>>,
    fail_next: Mutex<usize>,
    /// Like nf_tables' ruleset generation: bumped by every change; `None`
    /// emulates legacy iptables, which has none.
    generation: Mutex<Option<u32>>,
    saves: Mutex<usize>,
}

fn empty_table(table: Table) -> TableRules {
    let mut t = TableRules::default();
    for b in table.builtin_chains() {
        t.chains.insert((*b).to_string(), Chain { policy: Some("ACCEPT".into()), rules: Vec::new() });
    }
    t
}

fn same_rule(a: &str, b: &str) -> bool {
    a == b || matches!((tokenize(a), tokenize(b)), (Ok(x), Ok(y)) if x == y)
}

fn references(t: &TableRules, chain: &str) -> bool {
    t.chains
        .values()
        .flat_map(|c| &c.rules)
        .any(|r| parse_rule(r).ok().and_then(|p| p.chain_target().map(|c| c == chain)).unwrap_or(false))
}

impl FakeIptables {
    /// Emulates iptables-nft (with a ruleset generation).
    pub fn new() -> Self {
        FakeIptables { generation: Mutex::new(Some(1)), ..FakeIptables::default() }
    }

    /// Emulates iptables-legacy (no generation: every periodic sync reads the tables).
    pub fn legacy() -> Self {
        FakeIptables::default()
    }

    fn bump(&self) {
        if let Some(g) = self.generation.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            *g = g.wrapping_add(1);
        }
    }

    /// The current tables of a family (nat and filter exist from the start).
    pub fn ruleset(&self, family: IpFamily) -> Ruleset {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut rs = state.get(&family).cloned().unwrap_or_default();
        for t in [Table::Nat, Table::Filter] {
            rs.tables.entry(t).or_insert_with(|| empty_table(t));
        }
        rs
    }

    /// Replaces a family's tables (to plant leftovers or simulate an admin).
    pub fn set_ruleset(&self, family: IpFamily, rs: Ruleset) {
        let old = self.state.lock().unwrap_or_else(|e| e.into_inner()).insert(family, rs.clone());
        if old.as_ref() != Some(&rs) {
            self.bump();
        }
    }

    /// `iptables -t TABLE -F`: flushes every chain of a table (built-in and user).
    pub fn flush_table(&self, family: IpFamily, table: Table) {
        let mut rs = self.ruleset(family);
        if let Some(t) = rs.tables.get_mut(&table) {
            for c in t.chains.values_mut() {
                c.rules.clear();
            }
        }
        self.set_ruleset(family, rs);
    }

    /// Every payload applied so far, successful or not.
    pub fn payloads(&self) -> Vec<(IpFamily, String)> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn clear_payloads(&self) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How many times a table was read (`iptables-save -t TABLE`).
    pub fn saves(&self) -> usize {
        *self.saves.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next `n` restores fail before changing anything.
    pub fn fail_next(&self, n: usize) {
        *self.fail_next.lock().unwrap_or_else(|e| e.into_inner()) = n;
    }

    /// Applies a restore payload; tables before a failing one stay committed,
    /// as with the real `iptables-restore`.
    pub fn apply(&self, family: IpFamily, payload: &str) -> Result<(), String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push((family, payload.to_string()));
        {
            let mut f = self.fail_next.lock().unwrap_or_else(|e| e.into_inner());
            if *f > 0 {
                *f -= 1;
                return Err("injected failure".into());
            }
        }
        let mut rs = self.ruleset(family);
        let mut current: Option<(Table, TableRules)> = None;
        for (i, line) in payload.lines().enumerate() {
            let fail = |msg: &str| format!("line {}: {msg}: {line}", i + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                let table = Table::parse(name).ok_or_else(|| fail("unknown table"))?;
                let state = rs.tables.get(&table).cloned().unwrap_or_else(|| empty_table(table));
                current = Some((table, state));
                continue;
            }
            if line == "COMMIT" {
                let (table, state) = current.take().ok_or_else(|| fail("COMMIT outside a table"))?;
                rs.tables.insert(table, state);
                // One transaction per table; one that changes nothing keeps the generation.
                self.set_ruleset(family, rs.clone());
                continue;
            }
            let Some((table, t)) = current.as_mut() else { return Err(fail("outside a table")) };
            let builtin = |c: &str| table.builtin_chains().contains(&c);
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().ok_or_else(|| fail("no chain name"))?;
                if builtin(name) {
                    continue;
                }
                t.chains.entry(name.to_string()).or_default().rules.clear();
                continue;
            }
            let words = tokenize(line).map_err(|e| fail(&e))?;
            let op = words.first().map(String::as_str).unwrap_or("");
            let chain = words.get(1).cloned().ok_or_else(|| fail("no chain"))?;
            // The rule text after "OP CHAIN [N]".
            let rest_after = |n: usize| line.splitn(n + 1, char::is_whitespace).nth(n).unwrap_or("").trim().to_string();
            match op {
                "-A" | "-I" => {
                    let (pos, rule) = match (op, words.get(2).and_then(|w| w.parse::<usize>().ok())) {
                        ("-I", Some(n)) => (Some(n), rest_after(3)),
                        ("-I", None) => (Some(1), rest_after(2)),
                        _ => (None, rest_after(2)),
                    };
                    let parsed = parse_rule(&rule).map_err(|e| fail(&e))?;
                    if let Some(target) = parsed.chain_target()
                        && !t.chains.contains_key(target)
                    {
                        return Err(fail(&format!("chain {target} does not exist")));
                    }
                    let c = t.chains.get_mut(&chain).ok_or_else(|| fail("no such chain"))?;
                    match pos {
                        Some(n) if n >= 1 && n <= c.rules.len() + 1 => c.rules.insert(n - 1, rule),
                        Some(_) => return Err(fail("index out of range")),
                        None => c.rules.push(rule),
                    }
                }
                "-D" => {
                    let c = t.chains.get_mut(&chain).ok_or_else(|| fail("no such chain"))?;
                    if words.len() == 3
                        && let Ok(n) = words[2].parse::<usize>()
                    {
                        if n == 0 || n > c.rules.len() {
                            return Err(fail("index out of range"));
                        }
                        c.rules.remove(n - 1);
                    } else {
                        let rule = rest_after(2);
                        let at =
                            c.rules.iter().position(|r| same_rule(r, &rule)).ok_or_else(|| fail("no such rule"))?;
                        c.rules.remove(at);
                    }
                }
                "-F" => {
                    t.chains.get_mut(&chain).ok_or_else(|| fail("no such chain"))?.rules.clear();
                }
                "-N" => {
                    if t.chains.contains_key(&chain) {
                        return Err(fail("chain exists"));
                    }
                    t.chains.insert(chain, Chain::default());
                }
                "-X" => {
                    if builtin(&chain) {
                        return Err(fail("cannot delete a built-in chain"));
                    }
                    let c = t.chains.get(&chain).ok_or_else(|| fail("no such chain"))?;
                    if !c.rules.is_empty() {
                        return Err(fail("chain not empty"));
                    }
                    if references(t, &chain) {
                        return Err(fail("chain is referenced"));
                    }
                    t.chains.remove(&chain);
                }
                _ => return Err(fail("unknown command")),
            }
        }
        if current.is_some() {
            return Err("input ended without COMMIT".into());
        }
        Ok(())
    }
}

impl Executor for FakeIptables {
    fn restore(&self, family: IpFamily, payload: &str) -> Result<(), Error> {
        self.apply(family, payload).map_err(|detail| Error::Command {
            program: "fake-iptables-restore".into(),
            status: "exit status: 1".into(),
            detail,
        })
    }

    fn save(&self, family: IpFamily, table: Table) -> Result<String, Error> {
        *self.saves.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let rs = self.ruleset(family);
        let mut one = Ruleset::default();
        if let Some(t) = rs.tables.get(&table) {
            one.tables.insert(table, t.clone());
        }
        Ok(one.render_save())
    }

    fn generation(&self) -> Option<u32> {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_semantics() {
        let f = FakeIptables::new();
        let v4 = IpFamily::V4;
        f.apply(
            v4,
            "*nat\n:SWITCHYARD-A - [0:0]\n-A SWITCHYARD-A -j RETURN\n-I PREROUTING 1 -j SWITCHYARD-A\nCOMMIT\n",
        )
        .unwrap();
        let nat = f.ruleset(v4).tables[&Table::Nat].clone();
        assert_eq!(nat.rules("PREROUTING"), ["-j SWITCHYARD-A"]);
        // Referenced chains cannot be deleted; a failing table changes nothing.
        assert!(f.apply(v4, "*nat\n:SWITCHYARD-A - [0:0]\n-X SWITCHYARD-A\nCOMMIT\n").is_err());
        assert_eq!(f.ruleset(v4).tables[&Table::Nat], nat);
        // Declaring flushes; -D by spec; -X once unreferenced.
        f.apply(v4, "*nat\n:SWITCHYARD-A - [0:0]\n-D PREROUTING -j SWITCHYARD-A\n-X SWITCHYARD-A\nCOMMIT\n").unwrap();
        assert!(f.ruleset(v4).tables[&Table::Nat].chain("SWITCHYARD-A").is_none());
        assert!(f.apply(v4, "*nat\n-D PREROUTING -j SWITCHYARD-A\nCOMMIT\n").is_err());
        assert!(f.apply(v4, "*nat\n-A PREROUTING -j SWITCHYARD-MISSING\nCOMMIT\n").is_err());
    }
}
