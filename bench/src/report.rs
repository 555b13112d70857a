//! The results of one run: the JSON model, the Markdown tables, the goals.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{Samples, fmt_us};

/// What a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Straight to the pod IP: the lab's physical limit.
    Direct,
    /// kube-proxy's shape loaded with kube-proxy's tools (no daemon).
    Reference,
    /// The switchyard daemon with one proxy mode.
    Switchyard,
    /// Against a real API server (`--real`): upstream kube-proxy, or switchyard.
    Real,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Churn {
    pub changes_per_second: f64,
    pub seconds: f64,
    pub changes: usize,
    pub syncs: usize,
    /// Event in → kernel acknowledged, per change.
    pub kernel: Samples,
    /// Daemon CPU (own + children) during churn, % of one core.
    pub cpu_percent: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Footprint {
    /// Peak RSS of the daemon after loading N Services (MiB).
    pub peak_rss_load_mib: f64,
    /// Peak RSS after churn too (MiB).
    pub peak_rss_mib: f64,
    /// CPU seconds (daemon + the programs it ran) from start to the first sync.
    pub cpu_load_s: f64,
}

/// TCP's own counters over the data-plane measurements: whether any
/// connection waited for a retransmitted SYN, and where it was lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Losses {
    /// Client: SYNs sent again (`TcpExt: TCPSynRetrans`), each a connection
    /// that waited at least a second.
    pub syn_retransmits: u64,
    /// Pod: SYNs dropped because the listener's accept queue was full
    /// (`TcpExt: ListenOverflows`): the harness, not the dataplane.
    pub listen_overflows: u64,
    /// Pod: every SYN the listener dropped (`TcpExt: ListenDrops`).
    pub listen_drops: u64,
}

/// One backend at one number of Services.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub backend: String,
    pub kind: Kind,
    pub services: usize,
    pub endpoints: usize,
    /// Start (daemon spawn / restore start) → kernel acknowledged.
    pub cold_kernel: Option<Samples>,
    /// Start → first answered connection to the last-created Service.
    pub cold_answer: Option<Samples>,
    /// Of the cold start, the backend's first `sync()` alone (the rest is
    /// process start-up and the initial lists from the API server).
    pub cold_sync: Option<Samples>,
    /// One endpoint changed: event in → kernel acknowledged.
    pub change_kernel: Option<Samples>,
    /// One endpoint changed: event in → first connection reaching the new endpoint.
    pub change_connect: Option<Samples>,
    pub churn: Option<Churn>,
    pub footprint: Option<Footprint>,
    /// TCP connect() latency (SYN → SYN-ACK) to the first / last-created Service.
    pub connect_first: Option<Samples>,
    pub connect_last: Option<Samples>,
    /// Sequential connect, request, response, close (conn/s), first / last.
    pub rate_first: Option<f64>,
    pub rate_last: Option<f64>,
    /// One long TCP flow through the NodePort (direct: to the pod IP), Gbit/s.
    pub nodeport_gbps: Option<f64>,
    /// Over the connect, rate and long-flow measurements.
    pub losses: Option<Losses>,
    pub errors: Vec<String>,
}

impl Row {
    pub fn new(backend: &str, kind: Kind, services: usize, endpoints: usize) -> Row {
        Row {
            backend: backend.to_string(),
            kind,
            services,
            endpoints,
            cold_kernel: None,
            cold_answer: None,
            cold_sync: None,
            change_kernel: None,
            change_connect: None,
            churn: None,
            footprint: None,
            connect_first: None,
            connect_last: None,
            rate_first: None,
            rate_last: None,
            nodeport_gbps: None,
            losses: None,
            errors: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub iptables: String,
    pub nft: String,
    pub load_before: String,
    pub load_after: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Unavailable {
    pub backend: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub command: String,
    pub quick: bool,
    pub build: String,
    pub started: String,
    pub duration_s: f64,
    pub min_sync_period: String,
    pub cpus: crate::lab::Cpus,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub rows: Vec<Row>,
    pub unavailable: Vec<Unavailable>,
}

fn p50p99(s: &Option<Samples>) -> String {
    match s {
        Some(s) if !s.is_empty() => format!("{} / {}", fmt_us(s.p50_us), fmt_us(s.p99_us)),
        _ => "–".into(),
    }
}

fn p50(s: &Option<Samples>) -> String {
    match s {
        Some(s) if !s.is_empty() => fmt_us(s.p50_us),
        _ => "–".into(),
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.filter(|x| x.is_finite()).map_or_else(|| "–".into(), f)
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Run {
    /// The same backend's row at one Service (for "vs 1 Service").
    fn base(&self, row: &Row) -> Option<&Row> {
        self.rows.iter().find(|r| r.backend == row.backend && r.services == 1)
    }

    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(
            o,
            "Machine: {} ({} cores, {:.0} GiB), Linux {}, {}, {}; load average {} before, {} after. \
             Build: {}. Client pinned to CPU {}, pod server and daemon to CPU {}. \
             Daemon flags: `--min-sync-period {}`. Started {}, took {:.0} s.\n",
            m.cpu,
            m.cores,
            m.memory_gib,
            m.kernel,
            m.iptables,
            m.nft,
            m.load_before,
            m.load_after,
            self.build,
            self.cpus.client.map_or("-".into(), |c| c.to_string()),
            self.cpus.dataplane.map_or("-".into(), |c| c.to_string()),
            self.min_sync_period,
            self.started,
            self.duration_s
        );
        if self.quick {
            o.push_str("**Quick run (CI smoke): few samples, not for comparison.**\n\n");
        }
        o.push_str("#### Control plane (p50 / p99)\n\n");
        o.push_str("| backend | Services × endpoints | cold start: kernel (of which first sync) | cold start: answering | one endpoint: kernel | one endpoint: first connection | churn: kernel | daemon peak RSS (load / churn) | daemon CPU (load / churn) |\n");
        o.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for r in self.rows.iter().filter(|r| r.kind != Kind::Direct && r.services > 1) {
            let churn = r.churn.as_ref().map_or("–".into(), |c| {
                format!("{} ({:.0}/s)", p50p99(&Some(c.kernel.clone())), c.changes_per_second)
            });
            let rss = r
                .footprint
                .as_ref()
                .map_or("–".into(), |f| format!("{:.1} / {:.1} MiB", f.peak_rss_load_mib, f.peak_rss_mib));
            let cpu = match (&r.footprint, &r.churn) {
                (Some(f), Some(c)) => format!("{:.2} s / {:.0} %", f.cpu_load_s, c.cpu_percent),
                (Some(f), None) => format!("{:.2} s / –", f.cpu_load_s),
                _ => "–".into(),
            };
            let _ = writeln!(
                o,
                "| {} | {} × {} | {}{} | {} | {} | {} | {} | {} | {} |",
                r.backend,
                thousands(r.services),
                r.endpoints,
                p50(&r.cold_kernel),
                r.cold_sync
                    .as_ref()
                    .filter(|s| !s.is_empty())
                    .map_or(String::new(), |s| format!(" ({})", fmt_us(s.p50_us))),
                p50(&r.cold_answer),
                p50p99(&r.change_kernel),
                p50p99(&r.change_connect),
                churn,
                rss,
                cpu
            );
        }
        o.push_str("\n#### Data plane\n\n");
        o.push_str("| backend | Services | connect p50 / p99, first Service | connect p50 / p99, last Service | last vs 1 Service (p50) | conn/s first | conn/s last | last vs 1 Service (rate) | NodePort long flow | SYN retransmits (listen drops) |\n");
        o.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let base = self.base(r);
            let delta = match (base.and_then(|b| b.connect_last.as_ref()), r.connect_last.as_ref()) {
                (Some(b), Some(c)) if r.services > 1 && !b.is_empty() && !c.is_empty() => {
                    format!("{:+.1} µs", c.p50_us - b.p50_us)
                }
                _ => "–".into(),
            };
            let ratio = match (base.and_then(|b| b.rate_last), r.rate_last) {
                (Some(b), Some(c)) if r.services > 1 && b > 0.0 => format!("{:.0} %", c / b * 100.0),
                _ => "–".into(),
            };
            let services = if r.kind == Kind::Direct { "– (pod IP)".to_string() } else { thousands(r.services) };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.backend,
                services,
                p50p99(&r.connect_first),
                p50p99(&r.connect_last),
                delta,
                opt(r.rate_first, |v| format!("{v:.0}")),
                opt(r.rate_last, |v| format!("{v:.0}")),
                ratio,
                opt(r.nodeport_gbps, |v| format!("{v:.2} Gbit/s")),
                r.losses.map_or("–".into(), |l| format!("{} ({})", l.syn_retransmits, l.listen_drops)),
            );
        }
        let errors: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| r.errors.iter().map(move |e| format!("{} at {}: {e}", r.backend, thousands(r.services))))
            .collect();
        if !self.unavailable.is_empty() || !errors.is_empty() {
            o.push_str("\nNot measured:\n\n");
            for u in &self.unavailable {
                let _ = writeln!(o, "- {}: {}", u.backend, u.reason);
            }
            for e in errors {
                let _ = writeln!(o, "- {e}");
            }
        }
        o.push_str("\n#### Goals (issue 8)\n\n| goal | backend | measured | verdict |\n|---|---|---|---|\n");
        for g in self.goals() {
            let _ = writeln!(o, "| {} | {} | {} | {} |", g.goal, g.backend, g.measured, g.verdict);
        }
        o
    }

    fn row(&self, backend: &str, services: usize) -> Option<&Row> {
        self.rows.iter().find(|r| r.backend == backend && r.services == services)
    }

    /// Each goal of the issue against every switchyard mode measured.
    pub fn goals(&self) -> Vec<Goal> {
        let mut out = Vec::new();
        let mut modes: Vec<&str> = Vec::new();
        for r in self.rows.iter().filter(|r| r.kind == Kind::Switchyard) {
            if !modes.contains(&r.backend.as_str()) {
                modes.push(&r.backend);
            }
        }
        for name in modes {
            let mode = name.trim_start_matches("switchyard ");
            let fast = matches!(mode, "ipvs" | "ebpf");
            let change_goal_us = match mode {
                "iptables" => Some(50_000.0),
                "ipvs" => Some(5_000.0),
                "ebpf" => Some(1_000.0),
                _ => None,
            };
            let at10k = self.row(name, 10_000);
            let at30k = self.row(name, 30_000);
            let at1 = self.row(name, 1);
            if let Some(limit) = change_goal_us {
                let v = at10k.and_then(|r| r.change_kernel.as_ref()).filter(|s| !s.is_empty()).map(|s| s.p50_us);
                out.push(Goal::check(
                    format!("one-endpoint change at 10k programmed ≤ {}", fmt_us(limit)),
                    name,
                    v,
                    |x| x <= limit,
                    fmt_us,
                ));
            }
            let cold_limit = if fast { 1e6 } else { 2e6 };
            let v = at10k.and_then(|r| r.cold_answer.as_ref()).filter(|s| !s.is_empty()).map(|s| s.p50_us);
            out.push(Goal::check(
                format!("cold start at 10k ≤ {}", fmt_us(cold_limit)),
                name,
                v,
                |x| x <= cold_limit,
                fmt_us,
            ));
            let lat_limit = if fast { 10.0 } else { 30.0 };
            let v = match (at1.and_then(|r| r.connect_last.as_ref()), at30k.and_then(|r| r.connect_last.as_ref())) {
                (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => Some(b.p50_us - a.p50_us),
                _ => None,
            };
            out.push(Goal::check(
                format!("connect p50 at 30k within {lat_limit:.0} µs of 1 Service"),
                name,
                v,
                |x| x <= lat_limit,
                |x| format!("{x:+.1} µs"),
            ));
            if fast {
                let v = match (at1.and_then(|r| r.rate_last), at30k.and_then(|r| r.rate_last)) {
                    (Some(a), Some(b)) if a > 0.0 => Some(b / a * 100.0),
                    _ => None,
                };
                out.push(Goal::check(
                    "connection rate at 30k ≥ 95 % of 1 Service".into(),
                    name,
                    v,
                    |x| x >= 95.0,
                    |x| format!("{x:.0} %"),
                ));
            }
            let v = at10k.and_then(|r| r.footprint.as_ref()).map(|f| f.peak_rss_mib);
            out.push(Goal::check(
                "daemon peak RSS at 10k ≤ 64 MiB".into(),
                name,
                v,
                |x| x <= 64.0,
                |x| format!("{x:.1} MiB"),
            ));
            let measured: Vec<Losses> =
                self.rows.iter().filter(|r| r.backend == name).filter_map(|r| r.losses).collect();
            let v = (!measured.is_empty()).then(|| measured.iter().map(|l| l.syn_retransmits).sum::<u64>() as f64);
            out.push(Goal::check(
                "no connection waits for a SYN retransmit (every size)".into(),
                name,
                v,
                |x| x == 0.0,
                |x| format!("{x:.0} retransmitted"),
            ));
        }
        out
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub backend: String,
    pub measured: String,
    pub verdict: String,
}

impl Goal {
    fn check(
        goal: String,
        backend: &str,
        value: Option<f64>,
        ok: impl Fn(f64) -> bool,
        show: impl Fn(f64) -> String,
    ) -> Goal {
        let (measured, verdict) = match value {
            Some(v) if v.is_finite() => (show(v), if ok(v) { "met" } else { "**missed**" }.to_string()),
            _ => ("–".into(), "not measured in this run".into()),
        };
        Goal { goal, backend: backend.to_string(), measured, verdict }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rows: Vec<Row>) -> Run {
        Run {
            command: "x".into(),
            quick: true,
            build: "debug".into(),
            started: "now".into(),
            duration_s: 1.0,
            min_sync_period: "1ms".into(),
            cpus: crate::lab::Cpus { client: Some(0), dataplane: Some(1) },
            machine: Machine::default(),
            settings: serde_json::Value::Null,
            rows,
            unavailable: vec![Unavailable { backend: "switchyard ipvs".into(), reason: "no IPVS".into() }],
        }
    }

    #[test]
    fn plots_are_written_as_svg_and_png_with_every_backend_named() {
        if let Err(e) = crate::plot::init_font() {
            // `./x` installs fonts-dejavu-core; without it the harness runs with --no-plots.
            eprintln!("skipping: {e}");
            return;
        }
        let mut rows = Vec::new();
        for (backend, n, us) in [("switchyard ebpf", 1, 30.0), ("switchyard ebpf", 1000, 31.0), ("pod IP", 1, 28.0)] {
            let mut r = Row::new(backend, Kind::Switchyard, n, 10);
            r.connect_last = Some(Samples::new(vec![us, us + 1.0]));
            r.change_kernel = Some(Samples::new(vec![1000.0, 1200.0, 900.0]));
            r.cold_answer = Some(Samples::new(vec![400_000.0]));
            rows.push(r);
        }
        let dir = std::env::temp_dir().join(format!("swy-bench-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let written = crate::plot::write_all(&run(rows), &dir).expect("plots");
        let names: Vec<String> =
            written.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            ["connect-latency.svg", "change-latency.svg", "cold-start.svg", "change-distribution.svg"],
            "one SVG per figure"
        );
        let svg = std::fs::read_to_string(dir.join("connect-latency.svg")).expect("svg");
        assert!(svg.contains("switchyard ebpf"), "the legend names the backend");
        assert!(std::fs::metadata(dir.join("cold-start.png")).is_ok_and(|m| m.len() > 1000), "a PNG next to it");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tables_and_goals() {
        let mut a = Row::new("switchyard iptables", Kind::Switchyard, 1, 10);
        a.connect_last = Some(Samples::new(vec![50.0, 52.0]));
        a.rate_last = Some(1000.0);
        let mut b = Row::new("switchyard iptables", Kind::Switchyard, 10_000, 10);
        b.change_kernel = Some(Samples::new(vec![30_000.0, 70_000.0, 40_000.0]));
        b.footprint = Some(Footprint { peak_rss_load_mib: 40.0, peak_rss_mib: 80.0, cpu_load_s: 1.0 });
        let r = run(vec![a, b]);
        let md = r.markdown();
        assert!(md.contains("| switchyard iptables | 10,000 × 10 |"), "{md}");
        assert!(md.contains("switchyard ipvs: no IPVS"));
        let goals = r.goals();
        let change = goals.iter().find(|g| g.goal.starts_with("one-endpoint")).expect("goal");
        assert_eq!(change.verdict, "met");
        let rss = goals.iter().find(|g| g.goal.contains("RSS")).expect("goal");
        assert_eq!(rss.verdict, "**missed**");
        let lat = goals.iter().find(|g| g.goal.contains("connect p50")).expect("goal");
        assert_eq!(lat.verdict, "not measured in this run");
        let syn = goals.iter().find(|g| g.goal.contains("SYN retransmit")).expect("goal");
        assert_eq!(syn.verdict, "not measured in this run", "no row counted losses");
    }

    #[test]
    fn a_retransmitted_syn_in_any_row_misses_the_goal_and_shows_in_the_table() {
        let mut a = Row::new("switchyard ebpf", Kind::Switchyard, 1, 10);
        a.losses = Some(Losses::default());
        let mut b = Row::new("switchyard ebpf", Kind::Switchyard, 10_000, 10);
        b.losses = Some(Losses { syn_retransmits: 3, listen_overflows: 2, listen_drops: 2 });
        let r = run(vec![a.clone()]);
        let syn = r.goals().into_iter().find(|g| g.goal.contains("SYN retransmit")).expect("goal");
        assert_eq!(syn.verdict, "met");
        let r = run(vec![a, b]);
        let syn = r.goals().into_iter().find(|g| g.goal.contains("SYN retransmit")).expect("goal");
        assert_eq!((syn.verdict.as_str(), syn.measured.as_str()), ("**missed**", "3 retransmitted"));
        assert!(r.markdown().contains("| 3 (2) |"), "{}", r.markdown());
    }
}
