//! A packet tracer: evaluates our rules for the first packet of a connection,
//! the way the kernel walks the hooks, without root.
//!
//! It follows nat PREROUTING (or OUTPUT for the node's own traffic), the
//! filter hook routing picks (INPUT, FORWARD, OUTPUT), then nat POSTROUTING,
//! and explores every branch of `statistic` matches with its probability, so
//! one trace returns every endpoint a connection can reach and how likely
//! each is. `recent` lists are modelled per trace: a fresh client is in none,
//! and the lists an outcome `--set` can be fed back to trace the client's next
//! connection (ClientIP affinity).
//!
//! `inspect()` uses it on `iptables-save` output, the tests on rendered
//! rules; both read the rules back with [`crate::parse`].

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use proxy_core::Protocol;

use crate::error::Error;
use crate::names;
use crate::parse::{Cond, ParsedRule, RecentOp, Ruleset, Target, parse_rule};
use crate::restore::Table;

/// The node as the tracer sees it: which addresses are local (`addrtype LOCAL`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    pub local: BTreeSet<IpAddr>,
}

impl Host {
    pub fn new(local: impl IntoIterator<Item = IpAddr>) -> Self {
        Host { local: local.into_iter().collect() }
    }

    pub fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.local.contains(&ip)
    }
}

/// The first packet of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub dport: u16,
    /// Sent by a process on the node (nat OUTPUT) rather than arriving (nat PREROUTING).
    pub from_node: bool,
}

/// What finally happens to the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Accept,
    Drop,
    Reject,
}

/// One possible fate of the packet.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Where DNAT sent it, if anywhere.
    pub dnat: Option<SocketAddr>,
    /// Whether POSTROUTING masqueraded it.
    pub masquerade: bool,
    /// The chance of this outcome (statistic matches along the way).
    pub probability: f64,
    /// `recent` lists the path checked, with their `--seconds`.
    pub affinity_seconds: Option<u32>,
    /// `recent` lists the path added the client to.
    pub recent_set: BTreeSet<String>,
}

#[derive(Clone, Debug)]
struct State {
    dst: IpAddr,
    dport: u16,
    mark: u32,
    dnat: Option<SocketAddr>,
    masquerade: bool,
    probability: f64,
    recent: BTreeSet<String>,
    recent_set: BTreeSet<String>,
    affinity_seconds: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Fell off the end of the chain or RETURNed.
    Continue,
    /// A terminating target; DNAT and MASQUERADE end a nat hook as ACCEPT.
    Verdict(Verdict),
}

type Branches = Vec<(State, End)>;

/// Evaluates one family's rules.
#[derive(Debug)]
pub struct Tracer<'a> {
    ruleset: &'a Ruleset,
    host: &'a Host,
    parsed: RefCell<ParsedChains>,
}

const MAX_DEPTH: usize = 64;

/// Chains parsed so far, by table and name.
type ParsedChains = HashMap<(Table, String), Rc<Vec<ParsedRule>>>;

impl<'a> Tracer<'a> {
    pub fn new(ruleset: &'a Ruleset, host: &'a Host) -> Self {
        Tracer { ruleset, host, parsed: RefCell::new(HashMap::new()) }
    }

    fn rules(&self, table: Table, chain: &str) -> Result<Rc<Vec<ParsedRule>>, Error> {
        if let Some(r) = self.parsed.borrow().get(&(table, chain.to_string())) {
            return Ok(r.clone());
        }
        let texts = self
            .ruleset
            .table(table)
            .and_then(|t| t.chain(chain))
            .ok_or_else(|| Error::Trace { chain: chain.into(), reason: format!("no such chain in {table}") })?;
        let mut out = Vec::with_capacity(texts.rules.len());
        for text in &texts.rules {
            out.push(parse_rule(text).map_err(|reason| Error::Trace { chain: chain.into(), reason })?);
        }
        let out = Rc::new(out);
        self.parsed.borrow_mut().insert((table, chain.to_string()), out.clone());
        Ok(out)
    }

    /// Every fate of `packet`, for a client already in the `recent` lists given.
    pub fn trace(&self, packet: &Packet, recent: &BTreeSet<String>) -> Result<Vec<Outcome>, Error> {
        let start = State {
            dst: packet.dst,
            dport: packet.dport,
            mark: 0,
            dnat: None,
            masquerade: false,
            probability: 1.0,
            recent: recent.clone(),
            recent_set: BTreeSet::new(),
            affinity_seconds: None,
        };
        let mut out = Vec::new();
        let nat_hook = if packet.from_node { "OUTPUT" } else { "PREROUTING" };
        for (st, end) in self.builtin(packet, Table::Nat, nat_hook, start)? {
            if let End::Verdict(v @ (Verdict::Drop | Verdict::Reject)) = end {
                out.push(outcome(st, v));
                continue;
            }
            let local = self.host.is_local(st.dst);
            let filter_hook = match (packet.from_node, local) {
                (true, _) => "OUTPUT",
                (false, true) => "INPUT",
                (false, false) => "FORWARD",
            };
            for (st, end) in self.builtin(packet, Table::Filter, filter_hook, st)? {
                match end {
                    End::Verdict(v @ (Verdict::Drop | Verdict::Reject)) => out.push(outcome(st, v)),
                    _ if local && !packet.from_node => out.push(outcome(st, Verdict::Accept)),
                    _ => {
                        for (st, end) in self.builtin(packet, Table::Nat, "POSTROUTING", st)? {
                            let v = match end {
                                End::Verdict(v @ (Verdict::Drop | Verdict::Reject)) => v,
                                _ => Verdict::Accept,
                            };
                            out.push(outcome(st, v));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// A built-in chain: only rules that jump into our chains are followed;
    /// everything else there belongs to other software.
    fn builtin(&self, packet: &Packet, table: Table, chain: &str, st: State) -> Result<Branches, Error> {
        let texts = self.ruleset.table(table).and_then(|t| t.chain(chain)).map(|c| c.rules.clone()).unwrap_or_default();
        let mut states = vec![st];
        let mut done = Vec::new();
        for text in texts {
            let Ok(rule) = parse_rule(&text) else { continue };
            if !rule.chain_target().is_some_and(names::is_ours) {
                continue;
            }
            let mut next = Vec::new();
            for st in states {
                for (st, matched) in self.matches(packet, &rule, st)? {
                    if !matched {
                        next.push(st);
                        continue;
                    }
                    let target = rule.chain_target().unwrap_or_default().to_string();
                    for (st, end) in self.chain(packet, table, &target, st, 1)? {
                        match end {
                            End::Continue => next.push(st),
                            End::Verdict(_) => done.push((st, end)),
                        }
                    }
                }
            }
            states = next;
        }
        done.extend(states.into_iter().map(|s| (s, End::Continue)));
        Ok(done)
    }

    fn chain(&self, packet: &Packet, table: Table, chain: &str, st: State, depth: usize) -> Result<Branches, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::Trace { chain: chain.into(), reason: "jump depth limit (a loop?)".into() });
        }
        let rules = self.rules(table, chain)?;
        let mut work = vec![(st, 0usize)];
        let mut done = Vec::new();
        while let Some((st, i)) = work.pop() {
            let Some(rule) = rules.get(i) else {
                done.push((st, End::Continue));
                continue;
            };
            for (mut st, matched) in self.matches(packet, rule, st)? {
                if !matched {
                    work.push((st, i + 1));
                    continue;
                }
                match &rule.target {
                    Target::None => work.push((st, i + 1)),
                    Target::Jump(c) => {
                        for (st, end) in self.chain(packet, table, c, st, depth + 1)? {
                            match end {
                                End::Continue => work.push((st, i + 1)),
                                End::Verdict(_) => done.push((st, end)),
                            }
                        }
                    }
                    Target::Goto(c) => done.extend(self.chain(packet, table, c, st, depth + 1)?),
                    Target::Return => done.push((st, End::Continue)),
                    Target::Accept => done.push((st, End::Verdict(Verdict::Accept))),
                    Target::Drop => done.push((st, End::Verdict(Verdict::Drop))),
                    Target::Reject => done.push((st, End::Verdict(Verdict::Reject))),
                    Target::Dnat { ip, port } => {
                        let port = port.unwrap_or(st.dport);
                        st.dnat = Some(SocketAddr::new(*ip, port));
                        st.dst = *ip;
                        st.dport = port;
                        done.push((st, End::Verdict(Verdict::Accept)));
                    }
                    Target::Mark { value, mask } => {
                        st.mark = (st.mark & !mask) ^ value;
                        work.push((st, i + 1));
                    }
                    Target::Masquerade { .. } => {
                        st.masquerade = true;
                        done.push((st, End::Verdict(Verdict::Accept)));
                    }
                    Target::Other(name, _) => {
                        return Err(Error::Trace {
                            chain: chain.into(),
                            reason: format!("target {name} is not modelled"),
                        });
                    }
                }
            }
        }
        Ok(done)
    }

    /// Evaluates a rule's conditions; `statistic` forks the state.
    fn matches(&self, packet: &Packet, rule: &ParsedRule, st: State) -> Result<Vec<(State, bool)>, Error> {
        let mut states = vec![(st, true)];
        for m in &rule.matches {
            let mut next = Vec::with_capacity(states.len() + 1);
            for (mut st, ok) in states {
                if !ok {
                    next.push((st, false));
                    continue;
                }
                match &m.cond {
                    Cond::Statistic { probability } => {
                        let p = f64::from(*probability) / 2_147_483_648.0;
                        let p = p.clamp(0.0, 1.0);
                        if p > 0.0 {
                            let mut hit = st.clone();
                            hit.probability *= p;
                            next.push((hit, !m.negated));
                        }
                        if p < 1.0 {
                            st.probability *= 1.0 - p;
                            next.push((st, m.negated));
                        }
                    }
                    Cond::Recent { name, op, seconds } => {
                        let hit = match op {
                            RecentOp::Set => {
                                st.recent.insert(name.clone());
                                st.recent_set.insert(name.clone());
                                true
                            }
                            RecentOp::Remove => st.recent.remove(name),
                            RecentOp::Rcheck | RecentOp::Update => {
                                st.affinity_seconds = *seconds;
                                st.recent.contains(name)
                            }
                        };
                        next.push((st, hit != m.negated));
                    }
                    cond => {
                        let hit = self.cond(packet, &st, cond, rule)?;
                        next.push((st, hit != m.negated));
                    }
                }
            }
            states = next;
        }
        Ok(states)
    }

    fn cond(&self, packet: &Packet, st: &State, cond: &Cond, rule: &ParsedRule) -> Result<bool, Error> {
        let proto = packet.protocol.as_lower_str();
        Ok(match cond {
            Cond::Source(net) => net.contains(&packet.src),
            Cond::Destination(net) => net.contains(&st.dst),
            Cond::Protocol(p) => p == proto || p == "all",
            Cond::DPort(lo, hi) => (*lo..=*hi).contains(&st.dport),
            Cond::SrcType(t) if t == "LOCAL" => self.host.is_local(packet.src),
            Cond::DstType(t) if t == "LOCAL" => self.host.is_local(st.dst),
            Cond::CtState(states) => states.iter().any(|s| s == "NEW" || (s == "DNAT" && st.dnat.is_some())),
            Cond::Mark { value, mask } => st.mark & mask == *value,
            Cond::Comment(_) => true,
            other => {
                return Err(Error::Trace {
                    chain: format!("{rule:?}"),
                    reason: format!("condition {other:?} is not modelled"),
                });
            }
        })
    }
}

fn outcome(st: State, verdict: Verdict) -> Outcome {
    Outcome {
        verdict,
        dnat: st.dnat,
        masquerade: st.masquerade,
        probability: st.probability,
        affinity_seconds: st.affinity_seconds,
        recent_set: st.recent_set,
    }
}
