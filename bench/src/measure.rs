//! The measurements of one row: a backend at one number of Services, each
//! in fresh labs.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use crate::daemon::{ApiHost, Daemon, DaemonSpec};
use crate::kubeproxy;
use crate::lab::{self, Lab, NODE_IP, POD_PORT, sa};
use crate::objects::{self, NODE_PORT, SERVICE_PORT, Svc};
use crate::probe;
use crate::report::{Churn, Footprint, Kind, Losses, Row};
use crate::stats::Samples;

/// How much to measure (the `--quick` and full presets, plus flags).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Settings {
    pub quick: bool,
    pub sizes: Vec<usize>,
    pub endpoints: usize,
    /// Endpoints per Service from this many Services on (memory and time).
    pub large_from: usize,
    pub large_endpoints: usize,
    pub cold_reps: usize,
    pub change_reps: usize,
    /// A series of changes stops after this long (at least 3 samples).
    pub change_budget_s: f64,
    pub churn_rate: f64,
    pub churn_s: f64,
    pub connect_warmup: usize,
    pub connect_count: usize,
    pub reps: usize,
    pub rate_count: usize,
    pub throughput_s: f64,
    /// Bound on one load of kube-proxy's shape (nft -f at 30k takes minutes).
    pub reference_timeout_s: f64,
    /// Bound on a daemon's cold start.
    pub cold_timeout_s: f64,
    pub min_sync_period: String,
    pub iptables_restore: String,
    #[serde(skip)]
    pub cpus: lab::Cpus,
    #[serde(skip)]
    pub workdir: PathBuf,
}

impl Settings {
    pub fn endpoints_for(&self, n: usize) -> usize {
        if n >= self.large_from { self.large_endpoints } else { self.endpoints }
    }
}

/// A change series' figures: from sending each change to the sync that
/// carried it, and to the new endpoint's first answer (in µs).
#[derive(Default)]
pub(crate) struct ChangeSeries {
    kernel: Vec<f64>,
    conn: Vec<f64>,
}

impl ChangeSeries {
    /// Records change `v`, sent at `t0`; false when its sync never came
    /// (the series stops there: every later change would wait behind it).
    pub(crate) fn record(
        &mut self,
        row: &mut Row,
        v: impl std::fmt::Display,
        t0: SystemTime,
        synced: Option<SystemTime>,
        answered: Option<SystemTime>,
        timeout: Duration,
    ) -> bool {
        let Some(at) = synced else {
            row.errors.push(format!("change {v}: no sync within {:.0} s", timeout.as_secs_f64()));
            return false;
        };
        self.kernel.push(us_since(t0, at));
        match answered {
            Some(t) => self.conn.push(us_since(t0, t)),
            None => row.errors.push(format!("change {v}: the new endpoint never answered")),
        }
        true
    }

    pub(crate) fn finish(self, row: &mut Row) {
        row.change_kernel = Some(Samples::new(self.kernel));
        row.change_connect = Some(Samples::new(self.conn));
    }
}

pub(crate) fn us_since(t0: SystemTime, t: SystemTime) -> f64 {
    match t.duration_since(t0) {
        Ok(d) => d.as_secs_f64() * 1e6,
        Err(e) => -e.duration().as_secs_f64() * 1e6,
    }
}

fn first(svcs: &[Svc]) -> SocketAddr {
    sa(svcs[0].cluster_ip, SERVICE_PORT)
}

pub(crate) fn last(svcs: &[Svc]) -> SocketAddr {
    sa(svcs[svcs.len() - 1].cluster_ip, SERVICE_PORT)
}

/// Connect latency (pooled over repetitions; raw samples dropped, histogram kept).
fn connect(lab: &Lab, to: SocketAddr, s: &Settings) -> Result<Samples, String> {
    let mut all = Vec::new();
    for _ in 0..s.reps {
        let (w, c) = (s.connect_warmup, s.connect_count);
        all.extend(lab::in_ns(&lab.netns("client"), s.cpus.client, move || probe::connect_latency(to, w, c))??);
    }
    let mut samples = Samples::new(all);
    samples.samples_us.clear();
    Ok(samples)
}

fn rate(lab: &Lab, to: SocketAddr, s: &Settings) -> Result<f64, String> {
    let mut rates = Vec::new();
    for _ in 0..s.reps {
        let c = s.rate_count;
        rates.push(lab::in_ns(&lab.netns("client"), s.cpus.client, move || probe::rate(to, c / 10, c))??);
    }
    Ok(crate::stats::median(&rates))
}

fn throughput(lab: &Lab, to: SocketAddr, s: &Settings) -> Result<f64, String> {
    let mut v = Vec::new();
    for _ in 0..s.reps.min(3) {
        let secs = s.throughput_s;
        v.push(lab::in_ns(&lab.netns("ext"), s.cpus.client, move || probe::throughput(to, secs))??);
    }
    Ok(crate::stats::median(&v))
}

/// Runs `f`, recording its error in the row instead of failing the run.
fn record<T>(row: &mut Row, what: &str, r: Result<T, String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            row.errors.push(format!("{what}: {e}"));
            None
        }
    }
}

/// TCP's loss counters of the lab: SYN retransmits of both clients, the
/// pod listener's drops.
fn losses_now(lab: &Lab) -> Result<Losses, String> {
    let mut l = Losses::default();
    for host in ["client", "ext"] {
        let v = lab::in_ns(&lab.netns(host), None, || probe::tcp_ext_counters(&["TCPSynRetrans"]))??;
        l.syn_retransmits += v[0];
    }
    let v = lab::in_ns(&lab.netns("pod"), None, || probe::tcp_ext_counters(&["ListenOverflows", "ListenDrops"]))??;
    l.listen_overflows = v[0];
    l.listen_drops = v[1];
    Ok(l)
}

/// Runs the data-plane measurements in `f` and records in the row how many
/// SYNs TCP had to send again meanwhile (the goal is none).
fn counting_losses(row: &mut Row, lab: &Lab, f: impl FnOnce(&mut Row)) {
    let before = record(row, "TCP counters", losses_now(lab));
    f(row);
    let after = record(row, "TCP counters", losses_now(lab));
    if let (Some(b), Some(a)) = (before, after) {
        row.losses = Some(Losses {
            syn_retransmits: a.syn_retransmits.saturating_sub(b.syn_retransmits),
            listen_overflows: a.listen_overflows.saturating_sub(b.listen_overflows),
            listen_drops: a.listen_drops.saturating_sub(b.listen_drops),
        });
    }
}

/// The data-plane columns for a lab whose kernel serves `svcs`.
pub(crate) fn data_plane(row: &mut Row, lab: &Lab, svcs: &[Svc], s: &Settings) {
    let (f, l) = (first(svcs), last(svcs));
    counting_losses(row, lab, |row| {
        row.connect_first = record(row, "connect (first Service)", connect(lab, f, s));
        row.connect_last = record(row, "connect (last Service)", connect(lab, l, s));
        row.rate_first = record(row, "rate (first Service)", rate(lab, f, s));
        row.rate_last = record(row, "rate (last Service)", rate(lab, l, s));
        row.nodeport_gbps = record(row, "NodePort throughput", throughput(lab, sa(NODE_IP, NODE_PORT), s));
    });
}

/// A request loop in the client namespace, started now, answering when a
/// connection to `to` lands on `expect` (any endpoint when `None`).
pub(crate) fn watch_for(
    lab: &Lab,
    to: SocketAddr,
    expect: Option<IpAddr>,
    timeout: Duration,
    cpu: Option<usize>,
) -> std::thread::JoinHandle<Option<SystemTime>> {
    let ns = lab.netns("client");
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        lab::in_ns(&ns, cpu, move || {
            let _ = tx.send(());
            probe::wait_for(to, expect, Instant::now() + timeout)
        })
        .ok()
        .flatten()
    });
    let _ = rx.recv_timeout(Duration::from_secs(5));
    h
}

/// Straight to the pod: the lab's limit.
pub fn direct(n: usize, s: &Settings) -> Row {
    let mut row = Row::new("pod IP (no Service)", Kind::Direct, n, 0);
    let lab = match Lab::create(s.cpus, false) {
        Ok(l) => l,
        Err(e) => {
            row.errors.push(format!("lab: {e}"));
            return row;
        }
    };
    let to = sa(lab::pod_endpoint(0), POD_PORT);
    counting_losses(&mut row, &lab, |row| {
        row.connect_first = record(row, "connect", connect(&lab, to, s));
        row.connect_last = row.connect_first.clone();
        row.rate_first = record(row, "rate", rate(&lab, to, s));
        row.rate_last = row.rate_first;
        row.nodeport_gbps = record(row, "throughput", throughput(&lab, to, s));
    });
    row
}

/// Which of kube-proxy's shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Iptables,
    Nftables,
}

impl Shape {
    pub fn label(self, s: &Settings) -> String {
        match self {
            Shape::Iptables => format!("kube-proxy iptables shape ({})", s.iptables_restore),
            Shape::Nftables => "kube-proxy nftables shape (nft -f)".into(),
        }
    }

    fn load(self, lab: &Lab, payload: &str, s: &Settings, timeout: Duration) -> Result<(), String> {
        let ns = lab.netns("node");
        let mut cmd = match self {
            Shape::Iptables => {
                let mut c = ns.command(&s.iptables_restore).map_err(|e| e.to_string())?;
                c.args(["--noflush", "-w", "5"]);
                c
            }
            Shape::Nftables => {
                let mut c = ns.command("nft").map_err(|e| e.to_string())?;
                c.args(["-f", "-"]);
                c
            }
        };
        cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
        let pid = child.id() as i32;
        lab::LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner()).pids.insert(pid);
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let body = payload.as_bytes().to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&body));
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
                break Some(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        lab::LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner()).pids.remove(&pid);
        let _ = writer.join();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        match status {
            None => Err(format!("gave up after {:.0} s", timeout.as_secs_f64())),
            Some(st) if st.success() => Ok(()),
            Some(st) => Err(format!("exited with {st}: {}", err.lines().take(3).collect::<Vec<_>>().join(" / "))),
        }
    }
}

/// kube-proxy's shape, loaded with kube-proxy's tool (no daemon: the
/// "event in" is the start of the load).
///
/// When kube-proxy's shape cannot even load within the bound (10,000 × 10
/// endpoints takes minutes here), the row is measured again with 2 endpoints
/// per Service, says so, and keeps the failed attempt as a note.
pub fn reference(shape: Shape, n: usize, s: &Settings) -> Row {
    let eps = s.endpoints_for(n);
    let row = reference_with(shape, n, eps, s);
    let timed_out = row.errors.iter().any(|e| e.starts_with("load: gave up"));
    if timed_out && eps > 2 {
        let mut fallback = reference_with(shape, n, 2, s);
        fallback.errors.insert(
            0,
            format!(
                "with {eps} endpoints per Service the load {}; this row uses 2",
                row.errors[0].trim_start_matches("load: ")
            ),
        );
        return fallback;
    }
    row
}

fn reference_with(shape: Shape, n: usize, eps: usize, s: &Settings) -> Row {
    let mut row = Row::new(&shape.label(s), Kind::Reference, n, eps);
    let svcs = objects::all(n, eps);
    let payload = match shape {
        Shape::Iptables => kubeproxy::iptables_full(&svcs),
        Shape::Nftables => kubeproxy::nft_full(&svcs),
    };
    let timeout = Duration::from_secs_f64(s.reference_timeout_s);
    let mut kernel = Vec::new();
    let mut answer = Vec::new();
    let mut lab = None;
    for _ in 0..s.cold_reps {
        let l = match Lab::create(s.cpus, false) {
            Ok(l) => l,
            Err(e) => {
                row.errors.push(format!("lab: {e}"));
                return row;
            }
        };
        let prober = watch_for(&l, last(&svcs), None, timeout, s.cpus.client);
        let t0 = SystemTime::now();
        let loaded = shape.load(&l, &payload, s, timeout);
        let t1 = SystemTime::now();
        let answered = prober.join().ok().flatten();
        if let Err(e) = loaded {
            row.errors.push(format!("load: {e}"));
            row.cold_kernel = Some(Samples::new(vec![]));
            return row;
        }
        kernel.push(us_since(t0, t1));
        if let Some(t) = answered {
            answer.push(us_since(t0, t));
        }
        lab = Some(l);
        if us_since(t0, t1) > 20e6 {
            break; // slow loads: one sample is enough
        }
    }
    row.cold_kernel = Some(Samples::new(kernel));
    row.cold_answer = Some(Samples::new(answer));
    let Some(lab) = lab else { return row };
    data_plane(&mut row, &lab, &svcs, s);
    if n >= 3 {
        let mut kernel = Vec::new();
        let mut conn = Vec::new();
        let start = Instant::now();
        let mut current = svcs.clone();
        for v in 1..=s.change_reps {
            if v > 3 && start.elapsed().as_secs_f64() > s.change_budget_s {
                break;
            }
            let old = current[n - 1].clone();
            let new = objects::svc(n - 1, n, eps, v);
            current[n - 1] = new.clone();
            let payload = match shape {
                Shape::Iptables => kubeproxy::iptables_change(&current, &old, &new),
                Shape::Nftables => kubeproxy::nft_change(&old, &new),
            };
            let prober = watch_for(&lab, last(&svcs), Some(IpAddr::V4(new.endpoints[0])), timeout, s.cpus.client);
            let t0 = SystemTime::now();
            let loaded = shape.load(&lab, &payload, s, timeout);
            let t1 = SystemTime::now();
            let answered = prober.join().ok().flatten();
            if let Err(e) = loaded {
                row.errors.push(format!("change: {e}"));
                break;
            }
            kernel.push(us_since(t0, t1));
            match answered {
                Some(t) => conn.push(us_since(t0, t)),
                None => row.errors.push("change: the new endpoint never answered".into()),
            }
        }
        row.change_kernel = Some(Samples::new(kernel));
        row.change_connect = Some(Samples::new(conn));
    }
    row
}

/// The section a mode gets, with `{cgroup}` and `{bpffs}` filled in.
fn section_for(template: Option<&serde_json::Value>, lab: &Lab) -> Option<serde_json::Value> {
    let t = template?;
    let text = t.to_string();
    let cg = lab.cgroup.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let fs = lab.bpffs.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    serde_json::from_str(&text.replace("{cgroup}", &cg).replace("{bpffs}", &fs)).ok()
}

/// Everything needed to run the daemon in a fresh lab.
struct Setup {
    lab: Lab,
    api: ApiHost,
    kubeconfig: PathBuf,
}

fn setup(svcs: &[Svc], s: &Settings, bpffs: bool) -> Result<Setup, String> {
    let lab = Lab::create(s.cpus, bpffs)?;
    let ns_path = PathBuf::from("/run/netns").join(lab.ns_name("node"));
    let api = ApiHost::start(&ns_path)?;
    api.api().apply(&objects::node_json());
    for svc in svcs {
        api.api().apply(&objects::service_json(svc));
        api.api().apply(&objects::slice_json(svc));
    }
    let dir = s.workdir.join(lab.ns_name("kube"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let kubeconfig = api.api().write_kubeconfig(&dir).map_err(|e| e.to_string())?;
    Ok(Setup { lab, api, kubeconfig })
}

/// The switchyard daemon in one mode.
pub fn switchyard(
    mode: &str,
    template: Option<&serde_json::Value>,
    binary: &std::path::Path,
    n: usize,
    s: &Settings,
) -> Row {
    let eps = s.endpoints_for(n);
    let mut row = Row::new(&format!("switchyard {mode}"), Kind::Switchyard, n, eps);
    let svcs = objects::all(n, eps);
    let bpffs = template.is_some_and(|t| t.to_string().contains("{bpffs}"));
    let timeout = Duration::from_secs_f64(s.cold_timeout_s);
    let mut kernel = Vec::new();
    let mut answer = Vec::new();
    let mut sync = Vec::new();
    let mut running: Option<(Setup, Daemon)> = None;
    let mut load_footprint = None;
    let mut stalls = 0;
    let mut rep = 0;
    while rep < s.cold_reps {
        if let Some((_, d)) = running.take() {
            d.stop();
        }
        let st = match setup(&svcs, s, bpffs) {
            Ok(st) => st,
            Err(e) => {
                row.errors.push(format!("lab: {e}"));
                return row;
            }
        };
        let spec = DaemonSpec {
            binary: binary.to_path_buf(),
            mode: mode.to_string(),
            min_sync_period: s.min_sync_period.clone(),
            section: section_for(template, &st.lab),
            cpu: s.cpus.dataplane,
        };
        let prober = watch_for(&st.lab, last(&svcs), None, timeout, s.cpus.client);
        let ns_path = PathBuf::from("/run/netns").join(st.lab.ns_name("node"));
        let mut d = match Daemon::start(&spec, &ns_path, &st.kubeconfig, &s.workdir) {
            Ok(d) => d,
            Err(e) => {
                row.errors.push(format!("daemon: {e}"));
                return row;
            }
        };
        let synced = d.wait_sync(0, timeout);
        let answered = prober.join().ok().flatten();
        let Some(ev) = synced else {
            let (problems, tail) = d.problems();
            let status = d.exited();
            row.errors.push(format!(
                "no sync within {:.0} s (exit: {status:?}); {}",
                timeout.as_secs_f64(),
                problems.iter().chain(tail.iter().rev().take(4)).cloned().collect::<Vec<_>>().join(" | ")
            ));
            // A start that never finishes its initial lists is reported and
            // retried once in a fresh lab; a second one ends the row.
            stalls += 1;
            if stalls < 2 && status.is_none() {
                continue;
            }
            return row;
        };
        kernel.push(us_since(d.spawned, ev.at));
        sync.push(ev.sync_us);
        if let Some(t) = answered {
            answer.push(us_since(d.spawned, t));
        }
        load_footprint = d.footprint();
        running = Some((st, d));
        if rep == 0 && kernel[0] > 20e6 {
            break; // slow starts: one sample is enough
        }
        rep += 1;
    }
    row.cold_kernel = Some(Samples::new(kernel));
    row.cold_answer = Some(Samples::new(answer));
    row.cold_sync = Some(Samples::new(sync));
    let Some((st, d)) = running else { return row };
    let (rss_load, cpu_load) = load_footprint.map_or((f64::NAN, f64::NAN), |(r, own, ch)| (r, own + ch));
    data_plane(&mut row, &st.lab, &svcs, s);

    if n >= 3 {
        // One endpoint at a time, each change waited for.
        let mut generation = d.synced_generation();
        let mut changes = ChangeSeries::default();
        let start = Instant::now();
        for v in 1..=s.change_reps {
            if v > 3 && start.elapsed().as_secs_f64() > s.change_budget_s {
                break;
            }
            let new = objects::svc(n - 1, n, eps, v);
            let prober = watch_for(&st.lab, last(&svcs), Some(IpAddr::V4(new.endpoints[0])), timeout, s.cpus.client);
            let t0 = SystemTime::now();
            st.api.api().apply(&objects::slice_json(&new));
            generation += 1;
            let synced = d.wait_sync(generation, timeout).map(|ev| ev.at);
            let answered = prober.join().ok().flatten();
            if !changes.record(&mut row, v, t0, synced, answered, timeout) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        changes.finish(&mut row);

        // Churn: a steady stream of one-endpoint changes to other Services.
        let before = d.footprint();
        let base = d.synced_generation();
        let total = (s.churn_rate * s.churn_s).round().max(1.0) as usize;
        let mut versions = vec![0usize; n];
        let mut sent: Vec<(SystemTime, u64)> = Vec::with_capacity(total);
        let start = Instant::now();
        for k in 0..total {
            let at = start + Duration::from_secs_f64(k as f64 / s.churn_rate);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let idx = 1 + (k * 7919) % (n - 2);
            versions[idx] += 1;
            let svc = objects::svc(idx, n, eps, versions[idx]);
            let t = SystemTime::now();
            st.api.api().apply(&objects::slice_json(&svc));
            sent.push((t, base + k as u64 + 1));
        }
        let elapsed_send = start.elapsed().as_secs_f64();
        let done = d.wait_sync(base + total as u64, timeout.max(Duration::from_secs(60)));
        let after = d.footprint();
        if done.is_none() {
            row.errors.push("churn: the daemon did not catch up".into());
        }
        let syncs = d.syncs();
        let lat: Vec<f64> = sent
            .iter()
            .filter_map(|(t, g)| syncs.iter().find(|e| e.generation >= *g && e.at >= *t).map(|e| us_since(*t, e.at)))
            .collect();
        let churn_syncs = syncs.iter().filter(|e| e.generation > base).count();
        let cpu_percent = match (before, after) {
            (Some(b), Some(a)) => (a.1 + a.2 - b.1 - b.2) / elapsed_send.max(1e-3) * 100.0,
            _ => f64::NAN,
        };
        row.churn = Some(Churn {
            changes_per_second: s.churn_rate,
            seconds: elapsed_send,
            changes: total,
            syncs: churn_syncs,
            kernel: Samples::new(lat),
            cpu_percent,
        });
    }
    let rss_after = d.footprint().map_or(f64::NAN, |f| f.0);
    row.footprint = Some(Footprint { peak_rss_load_mib: rss_load, peak_rss_mib: rss_after, cpu_load_s: cpu_load });
    let (problems, _) = d.problems();
    for p in problems.into_iter().take(3) {
        row.errors.push(format!("daemon logged: {p}"));
    }
    d.stop();
    drop(st);
    row
}
