//! The report: a matrix of scenario × backend, with evidence, written as a
//! table, JSON and Markdown; plus the differences between backends.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use proxy_core::ProgrammedState;
use serde::{Deserialize, Serialize};

use crate::expect::Observed;

/// The verdict of one scenario on one backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail {
        reason: String,
    },
    Unsupported {
        reason: String,
    },
    /// Upstream kube-proxy failed where the scenario says it differs from
    /// switchyard on purpose (`upstreamDiffers`, explained in
    /// docs/semantics.md): `documented` is the scenario's reason, `reason` the failure.
    Differs {
        documented: String,
        reason: String,
    },
}

impl Status {
    pub fn short(&self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail { .. } => "FAIL",
            Status::Unsupported { .. } => "unsupported",
            Status::Differs { .. } => "differs",
        }
    }
}

/// What one step did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub label: String,
    pub kind: String,
    /// `client1 → 10.96.0.10:80/TCP`, `apply 1 / delete 0 objects`.
    pub detail: String,
    /// What the scenario expected, in words.
    pub expected: String,
    pub observed: Option<Observed>,
    pub passed: bool,
    pub problems: Vec<String>,
    /// How many tries the step took within its bound.
    pub tries: u32,
    pub elapsed_ms: u64,
    /// The expectation was sticky: which endpoint is picked is random, so
    /// backends are compared on how many answered, not which.
    #[serde(default)]
    pub sticky: bool,
}

/// One scenario on one backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub description: String,
    pub backend: String,
    #[serde(flatten)]
    pub status: Status,
    pub duration_ms: u64,
    pub steps: Vec<StepRecord>,
    /// Differences between the backend's `inspect()` and the core's expected
    /// state, after the last step.
    pub inspect_differences: Vec<String>,
    /// The backend's `inspect()` after the last step, for cross-backend comparison.
    pub inspect: Option<ProgrammedState>,
}

/// A difference between two backends on the same scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub scenario: String,
    pub backends: (String, String),
    pub what: String,
}

/// The whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub backends: Vec<String>,
    pub kernel: String,
    pub duration_ms: u64,
    pub results: Vec<ScenarioResult>,
    pub differences: Vec<Difference>,
}

/// Counts of one backend's results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub pass: usize,
    pub fail: usize,
    pub unsupported: usize,
    /// Documented differences of upstream kube-proxy ([`Status::Differs`]).
    pub differs: usize,
}

impl Tally {
    /// `52 passed, 0 failed, 1 unsupported` (and `, 1 differs as documented` when any does).
    pub fn summary(&self) -> String {
        let mut s = format!("{} passed, {} failed, {} unsupported", self.pass, self.fail, self.unsupported);
        if self.differs > 0 {
            s.push_str(&format!(", {} differ as documented", self.differs));
        }
        s
    }
}

impl Report {
    pub fn new(backends: Vec<String>, results: Vec<ScenarioResult>, duration_ms: u64) -> Report {
        let differences = compare_backends(&results);
        Report { backends, kernel: kernel_release(), duration_ms, results, differences }
    }

    pub fn failed(&self) -> bool {
        self.results.iter().any(|r| matches!(r.status, Status::Fail { .. }))
    }

    pub fn tally(&self, backend: &str) -> Tally {
        let mut t = Tally::default();
        for r in self.results.iter().filter(|r| r.backend == backend) {
            match r.status {
                Status::Pass => t.pass += 1,
                Status::Fail { .. } => t.fail += 1,
                Status::Unsupported { .. } => t.unsupported += 1,
                Status::Differs { .. } => t.differs += 1,
            }
        }
        t
    }

    fn scenarios(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.results.iter().map(|r| r.scenario.as_str()).filter(|s| seen.insert(*s)).collect()
    }

    fn cell(&self, scenario: &str, backend: &str) -> Option<&ScenarioResult> {
        self.results.iter().find(|r| r.scenario == scenario && r.backend == backend)
    }

    /// A plain-text matrix, then the evidence of every failure.
    pub fn table(&self) -> String {
        let scenarios = self.scenarios();
        let w = scenarios.iter().map(|s| s.len()).max().unwrap_or(8).max(8);
        let mut out = String::new();
        let _ = write!(out, "{:w$}", "scenario");
        for b in &self.backends {
            let _ = write!(out, "  {:>12}", b);
        }
        out.push('\n');
        for s in &scenarios {
            let _ = write!(out, "{s:w$}");
            for b in &self.backends {
                let cell = self
                    .cell(s, b)
                    .map_or("-".to_string(), |r| format!("{} {:.1}s", r.status.short(), r.duration_ms as f64 / 1000.0));
                let _ = write!(out, "  {cell:>12}");
            }
            out.push('\n');
        }
        for b in &self.backends {
            let t = self.tally(b);
            let _ = writeln!(out, "{b}: {}", t.summary());
        }
        for r in &self.results {
            match &r.status {
                Status::Fail { reason } => {
                    let _ = writeln!(out, "\nFAIL {} on {}: {reason}", r.scenario, r.backend);
                    for s in r.steps.iter().filter(|s| !s.passed) {
                        let _ = writeln!(out, "  step {} ({}): {}", s.label, s.kind, s.detail);
                        let _ = writeln!(out, "    expected: {}", s.expected);
                        if let Some(o) = &s.observed {
                            let _ = writeln!(out, "    observed: {}", o.summary());
                        }
                        for p in &s.problems {
                            let _ = writeln!(out, "    - {p}");
                        }
                        let _ = writeln!(out, "    tries {} over {} ms", s.tries, s.elapsed_ms);
                    }
                }
                Status::Unsupported { reason } => {
                    let _ = writeln!(out, "unsupported {} on {}: {reason}", r.scenario, r.backend);
                }
                Status::Differs { documented, reason } => {
                    let _ =
                        writeln!(out, "differs {} on {} (documented: {documented}): {reason}", r.scenario, r.backend);
                }
                Status::Pass => {}
            }
            for d in &r.inspect_differences {
                let _ = writeln!(out, "inspect {} on {}: {d}", r.scenario, r.backend);
            }
        }
        for d in &self.differences {
            let _ =
                writeln!(out, "DIFFERENCE {} between {} and {}: {}", d.scenario, d.backends.0, d.backends.1, d.what);
        }
        out
    }

    /// The report as Markdown: the matrix, then details per failure.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# switchyard conformance report\n\n");
        let _ = writeln!(
            out,
            "Kernel `{}`, {} backends, {:.1} s.\n",
            self.kernel,
            self.backends.len(),
            self.duration_ms as f64 / 1000.0
        );
        out.push_str("| scenario |");
        for b in &self.backends {
            let _ = write!(out, " {b} |");
        }
        out.push_str("\n|---|");
        for _ in &self.backends {
            out.push_str("---|");
        }
        out.push('\n');
        for s in self.scenarios() {
            let _ = write!(out, "| `{s}` |");
            for b in &self.backends {
                let cell = match self.cell(s, b).map(|r| &r.status) {
                    None => "–".to_string(),
                    Some(Status::Pass) => "✅ pass".into(),
                    Some(Status::Fail { .. }) => "❌ **fail**".into(),
                    Some(Status::Unsupported { reason }) => {
                        format!("⚪ unsupported: {}", one_line(reason).replace('|', "/"))
                    }
                    Some(Status::Differs { .. }) => "🔶 differs (documented)".into(),
                };
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out.push('\n');
        for b in &self.backends {
            let t = self.tally(b);
            let _ = writeln!(out, "- **{b}**: {}", t.summary());
        }
        let documented: Vec<(&ScenarioResult, &String)> = self
            .results
            .iter()
            .filter_map(|r| match &r.status {
                Status::Differs { documented, .. } => Some((r, documented)),
                _ => None,
            })
            .collect();
        if !documented.is_empty() {
            out.push_str("\n## Documented differences of upstream kube-proxy\n\n");
        }
        for (r, why) in documented {
            let _ = writeln!(out, "- `{}` on {}: {}", r.scenario, r.backend, one_line(why));
        }
        let failures: Vec<&ScenarioResult> =
            self.results.iter().filter(|r| matches!(r.status, Status::Fail { .. })).collect();
        if !failures.is_empty() {
            out.push_str("\n## Failures\n");
        }
        for r in failures {
            if let Status::Fail { reason } = &r.status {
                let _ = writeln!(out, "\n### `{}` on {}\n\n{}\n", r.scenario, r.backend, one_line(reason));
            }
            for s in r.steps.iter().filter(|s| !s.passed) {
                let _ = writeln!(out, "- step **{}** ({}): {}", s.label, s.kind, s.detail);
                let _ = writeln!(out, "  - expected: {}", s.expected);
                if let Some(o) = &s.observed {
                    let _ = writeln!(out, "  - observed: `{}`", o.summary());
                }
                for p in &s.problems {
                    let _ = writeln!(out, "  - {}", one_line(p));
                }
            }
        }
        let inspect: Vec<&ScenarioResult> = self.results.iter().filter(|r| !r.inspect_differences.is_empty()).collect();
        if !inspect.is_empty() {
            out.push_str("\n## inspect() versus the core's expected state\n\n");
            for r in inspect {
                for d in &r.inspect_differences {
                    let _ = writeln!(out, "- `{}` on {}: {}", r.scenario, r.backend, one_line(d));
                }
            }
        }
        if !self.differences.is_empty() {
            out.push_str("\n## Differences between backends\n\n");
            for d in &self.differences {
                let _ =
                    writeln!(out, "- `{}`: {} vs {}: {}", d.scenario, d.backends.0, d.backends.1, one_line(&d.what));
            }
        }
        out
    }
}

/// Evidence may carry multi-line tool output; a Markdown list item stays on one line.
fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ⏎ ")
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// What a step observed, reduced to what every conformant backend must share:
/// which endpoints answered and how the others failed (not counts or timings).
fn shape(s: &StepRecord) -> Option<String> {
    let o = s.observed.as_ref()?;
    let hosts: Vec<&String> = o.hosts.keys().collect();
    let answered = if s.sticky { format!("{} endpoint(s)", hosts.len()) } else { format!("{hosts:?}") };
    Some(format!(
        "answers from {answered}{}{}{}",
        if o.refused > 0 { ", refused" } else { "" },
        if o.timeouts > 0 { ", timeouts" } else { "" },
        if o.errors.is_empty() { "" } else { ", errors" }
    ))
}

/// Flags scenarios where two backends that both ran it observed different
/// things or report different kernel state.
pub fn compare_backends(results: &[ScenarioResult]) -> Vec<Difference> {
    let mut by_scenario: BTreeMap<&str, Vec<&ScenarioResult>> = BTreeMap::new();
    for r in results.iter().filter(|r| !matches!(r.status, Status::Unsupported { .. })) {
        by_scenario.entry(&r.scenario).or_default().push(r);
    }
    let mut out = Vec::new();
    for (scenario, runs) in by_scenario {
        for (i, a) in runs.iter().enumerate() {
            for b in runs.iter().skip(i + 1) {
                let pair = (a.backend.clone(), b.backend.clone());
                let mut push = |what: String| {
                    out.push(Difference { scenario: scenario.to_string(), backends: pair.clone(), what })
                };
                if a.status.short() != b.status.short() {
                    push(format!("{} {} but {} {}", a.backend, a.status.short(), b.backend, b.status.short()));
                }
                for (sa, sb) in a.steps.iter().zip(&b.steps) {
                    if sa.kind == "probe"
                        && let (Some(x), Some(y)) = (shape(sa), shape(sb))
                        && x != y
                    {
                        push(format!("step {}: {} saw {x}, {} saw {y}", sa.label, a.backend, b.backend));
                    }
                }
                if let (Some(x), Some(y)) = (&a.inspect, &b.inspect) {
                    for d in x.diff(y) {
                        push(format!("inspect() with {} as the reference: {d}", a.backend));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(scenario: &str, backend: &str, status: Status, hosts: &[&str]) -> ScenarioResult {
        let observed = Observed {
            hosts: hosts.iter().map(|h| (h.to_string(), 1)).collect(),
            attempts: hosts.len(),
            ..Default::default()
        };
        ScenarioResult {
            scenario: scenario.into(),
            description: String::new(),
            backend: backend.into(),
            status,
            duration_ms: 1200,
            steps: vec![StepRecord {
                label: "probe #0".into(),
                kind: "probe".into(),
                detail: "client1 → 10.96.0.10:80/TCP".into(),
                expected: "answers from {a1}".into(),
                observed: Some(observed),
                passed: true,
                problems: vec![],
                tries: 1,
                elapsed_ms: 3,
                sticky: false,
            }],
            inspect_differences: vec![],
            inspect: None,
        }
    }

    #[test]
    fn differences_between_backends_are_flagged() {
        let results = vec![
            result("s1", "iptables", Status::Pass, &["a1"]),
            result("s1", "ebpf", Status::Pass, &["a1", "a2"]),
            result("s2", "iptables", Status::Pass, &["a1"]),
            result("s2", "ebpf", Status::Unsupported { reason: "no SCTP".into() }, &[]),
        ];
        let mut sticky_a = result("s3", "iptables", Status::Pass, &["a1"]);
        sticky_a.steps[0].sticky = true;
        let mut sticky_b = result("s3", "ebpf", Status::Pass, &["b1"]);
        sticky_b.steps[0].sticky = true;
        let results = [results, vec![sticky_a, sticky_b]].concat();
        let diffs = compare_backends(&results);
        assert_eq!(diffs.len(), 1, "sticky picks may differ: {diffs:?}");
        assert_eq!(diffs[0].scenario, "s1");
        assert!(diffs[0].what.contains("a2"));
    }

    #[test]
    fn tables_and_markdown_show_the_matrix_and_evidence() {
        let mut failing = result("s1", "iptables", Status::Fail { reason: "step probe #0 failed".into() }, &["a2"]);
        failing.steps[0].passed = false;
        failing.steps[0].problems = vec!["answers from endpoints outside {\"a1\"}: {\"a2\"}".into()];
        let report =
            Report::new(vec!["iptables".into()], vec![failing, result("s2", "iptables", Status::Pass, &["a1"])], 5000);
        assert!(report.failed());
        assert_eq!(report.tally("iptables"), Tally { pass: 1, fail: 1, unsupported: 0, differs: 0 });
        let table = report.table();
        assert!(table.contains("FAIL s1 on iptables") && table.contains("outside"), "{table}");
        let md = report.markdown();
        assert!(md.contains("| `s1` | ❌ **fail** |") && md.contains("observed: `a2×1"), "{md}");
        let json = serde_json::to_string(&report).expect("json");
        assert!(json.contains("\"status\":\"fail\""));
    }
}
