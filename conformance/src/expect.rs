//! Checking observations against expectations. Pure functions, so the checks
//! themselves are unit-tested with wrong observations.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::addresses::canonical;
use crate::agent::{Attempt, Outcome};
use crate::scenario::{Expectation, SourceExpect};

/// The default bound on how fast a refusal comes.
pub const DEFAULT_REFUSED_WITHIN: Duration = Duration::from_millis(500);

/// What a batch of attempts observed, condensed for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub attempts: usize,
    /// Answers per host.
    pub hosts: BTreeMap<String, usize>,
    /// Source addresses the endpoints saw, with counts.
    pub sources: BTreeMap<String, usize>,
    pub refused: usize,
    pub timeouts: usize,
    /// Unreachable and other errors, with their detail.
    pub errors: BTreeMap<String, usize>,
    pub min_us: u64,
    pub median_us: u64,
    pub max_us: u64,
}

impl Observed {
    pub fn from_attempts(attempts: &[Attempt]) -> Observed {
        let mut o = Observed { attempts: attempts.len(), ..Default::default() };
        for a in attempts {
            match &a.outcome {
                Outcome::Reply { host, peer } => {
                    *o.hosts.entry(host.clone()).or_default() += 1;
                    *o.sources.entry(canonical(peer.ip()).to_string()).or_default() += 1;
                }
                Outcome::Refused => o.refused += 1,
                Outcome::Timeout => o.timeouts += 1,
                Outcome::Unreachable { detail } => *o.errors.entry(format!("unreachable: {detail}")).or_default() += 1,
                Outcome::Error { detail } => *o.errors.entry(detail.clone()).or_default() += 1,
            }
        }
        let mut times: Vec<u64> = attempts.iter().map(|a| a.elapsed_us).collect();
        times.sort_unstable();
        o.min_us = times.first().copied().unwrap_or(0);
        o.max_us = times.last().copied().unwrap_or(0);
        o.median_us = times.get(times.len() / 2).copied().unwrap_or(0);
        o
    }

    pub fn replies(&self) -> usize {
        self.hosts.values().sum()
    }

    /// A one-line summary: `a1×12 b1×8 src{10.244.1.100×20}`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self.hosts.iter().map(|(h, n)| format!("{h}×{n}")).collect();
        if self.refused > 0 {
            parts.push(format!("refused×{}", self.refused));
        }
        if self.timeouts > 0 {
            parts.push(format!("timeout×{}", self.timeouts));
        }
        for (e, n) in &self.errors {
            parts.push(format!("error[{e}]×{n}"));
        }
        if !self.sources.is_empty() {
            let src: Vec<String> = self.sources.iter().map(|(s, n)| format!("{s}×{n}")).collect();
            parts.push(format!("src{{{}}}", src.join(" ")));
        }
        parts.push(format!("t{{min {}µs p50 {}µs max {}µs}}", self.min_us, self.median_us, self.max_us));
        parts.join(" ")
    }
}

/// Who sent the probes and what counts as masqueraded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceContext {
    /// The source address the probes carried.
    pub client: IpAddr,
    /// node1's addresses: a masqueraded source is one of these.
    pub node_addresses: Vec<IpAddr>,
}

/// Checks attempts against an expectation; `Err` lists every violation.
pub fn check(expect: &Expectation, src: &SourceContext, attempts: &[Attempt]) -> Result<Observed, Vec<String>> {
    let o = Observed::from_attempts(attempts);
    let mut problems = Vec::new();
    if attempts.is_empty() {
        problems.push("no attempt was made".to_string());
    }
    if let Some(allowed) = &expect.endpoints {
        if o.replies() != o.attempts {
            problems.push(format!("{} of {} attempts got no answer", o.attempts - o.replies(), o.attempts));
        }
        let strays: BTreeSet<&String> = o.hosts.keys().filter(|h| !allowed.contains(*h)).collect();
        if !strays.is_empty() {
            problems.push(format!("answers from endpoints outside {allowed:?}: {strays:?}"));
        }
        if expect.sticky {
            if o.hosts.len() > 1 {
                problems.push(format!("not sticky: answers from {:?}", o.hosts.keys().collect::<Vec<_>>()));
            }
        } else {
            let missed: Vec<&String> = allowed.iter().filter(|h| !o.hosts.contains_key(*h)).collect();
            if !missed.is_empty() {
                problems.push(format!("endpoints never hit: {missed:?}"));
            }
            if let Some(tol) = expect.split
                && o.replies() > 0
            {
                let even = 1.0 / allowed.len() as f64;
                for h in allowed {
                    let share = o.hosts.get(h).copied().unwrap_or(0) as f64 / o.replies() as f64;
                    if (share - even).abs() > tol {
                        problems.push(format!(
                            "{h} got {:.0}% of answers; an even split is {:.0}% ± {:.0}%",
                            share * 100.0,
                            even * 100.0,
                            tol * 100.0
                        ));
                    }
                }
            }
        }
    }
    if expect.sticky && expect.endpoints.is_none() {
        problems.push("sticky needs endpoints".into());
    }
    if expect.refused {
        let within = expect.refused_within.map_or(DEFAULT_REFUSED_WITHIN, |d| d.0);
        if o.refused != o.attempts {
            problems.push(format!("expected every attempt refused, {} of {} were", o.refused, o.attempts));
        }
        let slow = attempts
            .iter()
            .filter(|a| a.outcome == Outcome::Refused && Duration::from_micros(a.elapsed_us) > within)
            .count();
        if slow > 0 {
            problems.push(format!("{slow} refusals took longer than {}ms", within.as_millis()));
        }
    }
    if expect.dropped && o.timeouts != o.attempts {
        problems.push(format!("expected every attempt dropped (timeout), {} of {} were", o.timeouts, o.attempts));
    }
    if expect.not_served && o.replies() > 0 {
        problems.push(format!("expected no answer, got {} from {:?}", o.replies(), o.hosts.keys().collect::<Vec<_>>()));
    }
    if let Some(source) = expect.source {
        for a in attempts {
            let Outcome::Reply { host, peer } = &a.outcome else { continue };
            let seen = canonical(peer.ip());
            let ok = match source {
                SourceExpect::Preserved => seen == src.client,
                // From node1 itself, masquerading may keep the very address
                // the node chose as source (the outgoing interface's): any
                // node1 address counts. From elsewhere it must have changed.
                SourceExpect::Masqueraded => {
                    src.node_addresses.contains(&seen)
                        && (seen != src.client || src.node_addresses.contains(&src.client))
                }
            };
            if !ok {
                problems.push(format!(
                    "{host} saw source {seen}, expected {} (client {})",
                    match source {
                        SourceExpect::Preserved => "the client's address",
                        SourceExpect::Masqueraded => "masqueraded to a node1 address other than the client's",
                    },
                    src.client
                ));
                break;
            }
        }
    }
    if problems.is_empty() { Ok(o) } else { Err(problems) }
}

/// Whether a sequence of answers shows more than one endpoint (affinity expired).
pub fn distinct_hosts(attempts: &[Attempt]) -> BTreeSet<String> {
    attempts
        .iter()
        .filter_map(|a| match &a.outcome {
            Outcome::Reply { host, .. } => Some(host.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Dur;

    fn reply(host: &str, src: &str) -> Attempt {
        Attempt {
            outcome: Outcome::Reply { host: host.into(), peer: format!("{src}:40000").parse().expect("addr") },
            elapsed_us: 300,
        }
    }

    fn ctx() -> SourceContext {
        SourceContext {
            client: "10.244.1.100".parse().expect("ip"),
            node_addresses: vec!["172.18.0.11".parse().expect("ip"), "10.244.1.1".parse().expect("ip")],
        }
    }

    fn endpoints(hosts: &[&str]) -> Expectation {
        Expectation { endpoints: Some(hosts.iter().map(|h| h.to_string()).collect()), ..Default::default() }
    }

    #[test]
    fn an_even_split_from_allowed_endpoints_passes() {
        let attempts: Vec<_> = (0..20).map(|i| reply(if i % 2 == 0 { "a1" } else { "b1" }, "10.244.1.100")).collect();
        let mut e = endpoints(&["a1", "b1"]);
        e.split = Some(0.2);
        e.source = Some(SourceExpect::Preserved);
        let o = check(&e, &ctx(), &attempts).expect("passes");
        assert_eq!(o.hosts.get("a1"), Some(&10));
    }

    #[test]
    fn a_stray_endpoint_fails() {
        let attempts = vec![reply("a1", "10.244.1.100"), reply("b1", "10.244.1.100"), reply("a2", "10.244.1.100")];
        let err = check(&endpoints(&["a1", "b1"]), &ctx(), &attempts).expect_err("stray");
        assert!(err.iter().any(|p| p.contains("outside")), "{err:?}");
    }

    #[test]
    fn a_missed_endpoint_fails() {
        let attempts = vec![reply("a1", "10.244.1.100"); 10];
        let err = check(&endpoints(&["a1", "b1"]), &ctx(), &attempts).expect_err("missed");
        assert!(err.iter().any(|p| p.contains("never hit")), "{err:?}");
    }

    #[test]
    fn a_skewed_split_fails() {
        let mut attempts = vec![reply("a1", "10.244.1.100"); 18];
        attempts.extend(vec![reply("b1", "10.244.1.100"); 2]);
        let mut e = endpoints(&["a1", "b1"]);
        e.split = Some(0.2);
        let err = check(&e, &ctx(), &attempts).expect_err("skewed");
        assert!(err.iter().any(|p| p.contains("even split")), "{err:?}");
    }

    #[test]
    fn unanswered_attempts_fail_a_forward_expectation() {
        let attempts = vec![reply("a1", "10.244.1.100"), Attempt { outcome: Outcome::Timeout, elapsed_us: 800_000 }];
        assert!(check(&endpoints(&["a1"]), &ctx(), &attempts).is_err());
    }

    #[test]
    fn source_preserved_and_masqueraded_are_told_apart() {
        let masq = vec![reply("a1", "10.244.1.1")];
        let mut e = endpoints(&["a1"]);
        e.source = Some(SourceExpect::Preserved);
        assert!(check(&e, &ctx(), &masq).is_err());
        e.source = Some(SourceExpect::Masqueraded);
        assert!(check(&e, &ctx(), &masq).is_ok());
        let preserved = vec![reply("a1", "10.244.1.100")];
        assert!(check(&e, &ctx(), &preserved).is_err());
        // Neither the client nor a node address: not a masquerade to the node.
        assert!(check(&e, &ctx(), &[reply("a1", "10.244.2.1")]).is_err());
        // node1 as the client: masquerading to the address it sent from is
        // still a masquerade to node1 (its outgoing interface's address).
        let from_node = SourceContext { client: "172.18.0.11".parse().expect("ip"), ..ctx() };
        assert!(check(&e, &from_node, &[reply("a1", "172.18.0.11")]).is_ok());
        assert!(check(&e, &from_node, &[reply("a1", "10.244.2.1")]).is_err());
    }

    #[test]
    fn refused_must_be_quick_and_total() {
        let e = Expectation { refused: true, ..Default::default() };
        let quick = vec![Attempt { outcome: Outcome::Refused, elapsed_us: 200 }; 3];
        assert!(check(&e, &ctx(), &quick).is_ok());
        let slow = vec![Attempt { outcome: Outcome::Refused, elapsed_us: 900_000 }];
        assert!(check(&e, &ctx(), &slow).is_err());
        let e2 = Expectation { refused: true, refused_within: Some(Dur(Duration::from_secs(1))), ..Default::default() };
        assert!(check(&e2, &ctx(), &slow).is_ok());
        let dropped = vec![Attempt { outcome: Outcome::Timeout, elapsed_us: 800_000 }];
        assert!(check(&e, &ctx(), &dropped).is_err());
        assert!(check(&e, &ctx(), &[reply("a1", "10.244.1.100")]).is_err());
    }

    #[test]
    fn dropped_means_timeouts_only() {
        let e = Expectation { dropped: true, ..Default::default() };
        assert!(check(&e, &ctx(), &[Attempt { outcome: Outcome::Timeout, elapsed_us: 800_000 }]).is_ok());
        assert!(check(&e, &ctx(), &[Attempt { outcome: Outcome::Refused, elapsed_us: 100 }]).is_err());
        assert!(check(&e, &ctx(), &[reply("a1", "10.244.1.100")]).is_err());
    }

    #[test]
    fn not_served_accepts_any_failure_but_no_answer() {
        let e = Expectation { not_served: true, ..Default::default() };
        let failures = vec![
            Attempt { outcome: Outcome::Timeout, elapsed_us: 1 },
            Attempt { outcome: Outcome::Refused, elapsed_us: 1 },
            Attempt { outcome: Outcome::Unreachable { detail: "no route".into() }, elapsed_us: 1 },
        ];
        assert!(check(&e, &ctx(), &failures).is_ok());
        assert!(check(&e, &ctx(), &[reply("a1", "10.244.1.100")]).is_err());
    }

    #[test]
    fn sticky_means_one_endpoint() {
        let mut e = endpoints(&["a1", "b1"]);
        e.sticky = true;
        assert!(check(&e, &ctx(), &vec![reply("b1", "10.244.1.100"); 5]).is_ok());
        assert!(check(&e, &ctx(), &[reply("a1", "10.244.1.100"), reply("b1", "10.244.1.100")]).is_err());
    }

    #[test]
    fn summaries_mention_everything() {
        let o = Observed::from_attempts(&[
            reply("a1", "10.244.1.100"),
            Attempt { outcome: Outcome::Refused, elapsed_us: 5 },
        ]);
        let s = o.summary();
        assert!(s.contains("a1×1") && s.contains("refused×1") && s.contains("10.244.1.100×1"), "{s}");
    }
}
