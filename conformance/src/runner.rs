//! The runner: plays every scenario against every backend in one lab.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proxy_core::{
    Capability, ChangeTracker, MasqueradeConfig, NodePortAddresses, PlannerConfig, ProxyEvent, Snapshot, TrackerConfig,
};
use serde_json::Value;
use tracing::{info, warn};

use crate::addresses::{self, HostPlan};
use crate::agent::{AgentRequest, AgentResponse, Attempt, Outcome, Proto};
use crate::driver::{Driver, DriverFactory};
use crate::error::ConformanceError;
use crate::expect::{self, Observed, SourceContext};
use crate::lab::{self, Lab};
use crate::oracle;
use crate::patience::{patience, poll, scaled};
use crate::report::{Report, ScenarioResult, Status, StepRecord};
use crate::scenario::{
    AffinityExpiry, Churn, Expectation, Hold, Kind, NodePortAddressesSpec, Probe, Restart, Scenario, Step, Update,
    event_for,
};

/// Default per-attempt timeout: also how long a dropped probe waits.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// What to run.
#[derive(Clone)]
pub struct SuiteConfig {
    pub backends: Vec<Arc<dyn DriverFactory>>,
    /// Each backend's configuration section by label; the string `{cgroup}`
    /// anywhere in it is replaced with the lab's cgroup path.
    pub sections: BTreeMap<String, Value>,
    /// Fail a scenario when the backend's `inspect()` differs from the core's expected state.
    pub strict_inspect: bool,
}

impl std::fmt::Debug for SuiteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<String> = self.backends.iter().map(|b| b.label()).collect();
        f.debug_struct("SuiteConfig").field("backends", &labels).field("strict_inspect", &self.strict_inspect).finish()
    }
}

fn substitute(v: &Value, cgroup: &str) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace("{cgroup}", cgroup)),
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, cgroup)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), substitute(x, cgroup))).collect()),
        other => other.clone(),
    }
}

/// Runs every scenario against every backend; the lab is reset between runs.
pub async fn run_suite(lab: &Lab, scenarios: &[Scenario], config: &SuiteConfig) -> Report {
    let start = Instant::now();
    let mut results = Vec::new();
    let cgroup = lab.cgroup().map(|p| p.display().to_string()).unwrap_or_default();
    for backend in &config.backends {
        let label = backend.label();
        // A binary backend (`ebpf@switchyard`) takes its mode's section
        // unless one names it exactly.
        let mode = label.split_once('@').map_or(label.as_str(), |(mode, _)| mode);
        let section = config
            .sections
            .get(&label)
            .or_else(|| config.sections.get(mode))
            .map(|v| substitute(v, &cgroup))
            .unwrap_or(Value::Null);
        let probe_ctx = lab.backend_context(
            proxy_core::FamilySet::V4,
            Lab::default_masquerade(),
            NodePortAddresses::All,
            section.clone(),
        );
        let available = backend.probe(&probe_ctx).await;
        for scenario in scenarios {
            let through_api = label.ends_with("+apiserver") || label.starts_with(crate::kubeproxy::LABEL_PREFIX);
            let result = match (&available, &scenario.file_source_only) {
                (Err(reason), _) => unsupported(scenario, &label, format!("backend unavailable: {reason}")),
                (Ok(()), Some(reason)) if through_api => {
                    unsupported(scenario, &label, format!("file source only: {reason}"))
                }
                (Ok(()), _) => run_scenario(lab, scenario, backend.as_ref(), &section).await,
            };
            let result = upstream_verdict(scenario, result);
            info!(scenario = %scenario.name, backend = %label, status = result.status.short(), ms = result.duration_ms, "scenario done");
            results.push(result);
            if let Err(e) = lab.reset().await {
                warn!(error = %e, "lab reset failed");
            }
        }
    }
    if config.strict_inspect {
        for r in &mut results {
            if r.status == Status::Pass && !r.inspect_differences.is_empty() {
                r.status = Status::Fail {
                    reason: format!("inspect() differs from the expected state: {}", r.inspect_differences.join("; ")),
                };
            }
        }
    }
    let labels = config.backends.iter().map(|b| b.label()).collect();
    Report::new(labels, results, start.elapsed().as_millis() as u64)
}

/// For upstream kube-proxy on a scenario marked `upstreamDiffers`: the
/// expected failure is a documented difference, a pass means the note is stale.
fn upstream_verdict(scenario: &Scenario, mut result: ScenarioResult) -> ScenarioResult {
    let Some(documented) = result
        .backend
        .strip_prefix(crate::kubeproxy::LABEL_PREFIX)
        .and_then(|mode| scenario.upstream_differs.as_ref()?.reason_for(mode))
        .map(str::to_owned)
    else {
        return result;
    };
    result.status = match std::mem::replace(&mut result.status, Status::Pass) {
        Status::Fail { reason } => Status::Differs { documented: documented.clone(), reason },
        Status::Pass => Status::Fail {
            reason: format!(
                "upstream kube-proxy passed, but the scenario says it differs ({documented}): \
                 remove upstreamDiffers and its entry in docs/semantics.md"
            ),
        },
        other => other,
    };
    result
}

fn unsupported(scenario: &Scenario, backend: &str, reason: String) -> ScenarioResult {
    ScenarioResult {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        backend: backend.to_string(),
        status: Status::Unsupported { reason },
        duration_ms: 0,
        steps: Vec::new(),
        inspect_differences: Vec::new(),
        inspect: None,
    }
}

/// Capabilities a scenario needs: the declared ones plus protocols and families it uses.
pub fn required_capabilities(s: &Scenario) -> BTreeSet<Capability> {
    let mut caps = s.requires.clone();
    let ports = s.echo_ports();
    if !ports.tcp.is_empty() {
        caps.insert(Capability::Tcp);
    }
    if !ports.udp.is_empty() {
        caps.insert(Capability::Udp);
    }
    if !ports.sctp.is_empty() {
        caps.insert(Capability::Sctp);
    }
    let fam = s.families();
    if fam.ipv4 {
        caps.insert(Capability::IPv4);
    }
    if fam.ipv6 {
        caps.insert(Capability::IPv6);
    }
    caps
}

/// The proxy configuration a scenario asks for.
pub fn scenario_settings(s: &Scenario) -> (MasqueradeConfig, NodePortAddresses) {
    let families = s.families();
    let masq = MasqueradeConfig {
        all: s.config.masquerade_all,
        cluster_cidrs: s.config.cluster_cidrs.clone().unwrap_or_else(|| lab::cluster_cidrs_for(families)),
    };
    let npa = match &s.config.node_port_addresses {
        None => NodePortAddresses::All,
        Some(NodePortAddressesSpec::Keyword(k)) if k == "primary" => NodePortAddresses::Primary,
        Some(NodePortAddressesSpec::Keyword(_)) => NodePortAddresses::All,
        Some(NodePortAddressesSpec::Cidrs(c)) => NodePortAddresses::Cidrs(c.clone()),
    };
    (masq, npa)
}

/// The state of one scenario run.
struct Run<'a> {
    lab: &'a Lab,
    scenario: &'a Scenario,
    driver: Box<dyn Driver>,
    objects: crate::scenario::ObjectStore,
    /// The core's view of the same objects: the oracle's snapshot.
    tracker: ChangeTracker,
    nodeport_addresses: NodePortAddresses,
    /// Held connections: name → (client host, endpoint that answered).
    held: BTreeMap<String, (String, String)>,
    steps: Vec<StepRecord>,
}

/// Plays one scenario on one backend.
pub async fn run_scenario(
    lab: &Lab,
    scenario: &Scenario,
    backend: &dyn DriverFactory,
    section: &Value,
) -> ScenarioResult {
    let start = Instant::now();
    let label = backend.label();
    let info = lab.info();
    if (!scenario.echo_ports().sctp.is_empty() || scenario.requires.contains(&Capability::Sctp))
        && let Err(reason) = &info.sctp
    {
        return unsupported(scenario, &label, format!("unsupported by this kernel: {reason}"));
    }
    if scenario.uses_ipv6() && !info.ipv6 {
        return unsupported(scenario, &label, "unsupported by this kernel: no IPv6".into());
    }
    let families = scenario.families();
    let (masq, npa) = scenario_settings(scenario);
    let ctx = lab.backend_context(families, masq.clone(), npa.clone(), section.clone());
    let mut tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig {
        node_name: addresses::NODE1.into(),
        families,
        masquerade: masq,
    }));
    for ev in scenario.objects.initial_events() {
        tracker.apply(ev);
    }
    let mut run = Run {
        lab,
        scenario,
        driver: backend.driver(ctx),
        objects: scenario.objects.clone(),
        tracker,
        nodeport_addresses: npa,
        held: BTreeMap::new(),
        steps: Vec::new(),
    };
    let outcome = run.play().await;
    let (inspect, inspect_differences) = run.inspect_now().await;
    let stop = run.driver.stop().await;
    let status = match (outcome, stop) {
        (Err(Verdict::Unsupported(reason)), _) => Status::Unsupported { reason },
        (Err(Verdict::Fail(reason)), _) => Status::Fail { reason },
        (Ok(()), Err(e)) => Status::Fail { reason: format!("cleanup failed: {}", proxy_core::ErrorChain(&e)) },
        (Ok(()), Ok(())) => Status::Pass,
    };
    ScenarioResult {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        backend: label,
        status,
        duration_ms: start.elapsed().as_millis() as u64,
        steps: run.steps,
        inspect_differences,
        inspect,
    }
}

enum Verdict {
    Fail(String),
    Unsupported(String),
}

fn describe(e: &Expectation) -> String {
    let mut parts = Vec::new();
    if let Some(eps) = &e.endpoints {
        parts.push(format!(
            "answers from {eps:?}{}",
            if e.sticky { ", all from one (sticky)" } else { ", each at least once" }
        ));
        if let Some(s) = e.split {
            parts.push(format!("even split ± {:.0}%", s * 100.0));
        }
    }
    if e.refused {
        parts.push("refused quickly".into());
    }
    if e.dropped {
        parts.push("dropped (no answer, no error)".into());
    }
    if e.not_served {
        parts.push("not served by the proxy".into());
    }
    if let Some(src) = e.source {
        parts.push(format!("source {src:?}"));
    }
    parts.join(", ")
}

impl Run<'_> {
    fn snapshot(&mut self) -> Arc<Snapshot> {
        self.tracker.snapshot()
    }

    fn bound(&self, within: Option<Duration>) -> Duration {
        within.map(scaled).unwrap_or_else(patience)
    }

    async fn play(&mut self) -> std::result::Result<(), Verdict> {
        let bound = patience();
        let expected = self.snapshot().expected_state();
        let started = self.driver.start(&self.objects, &expected, bound).await;
        let step_start = StepRecord {
            label: "initial sync".into(),
            kind: "start".into(),
            detail: format!("{} objects", self.objects.iter().count()),
            expected: format!("converged within {} ms", bound.as_millis()),
            observed: None,
            passed: started.is_ok(),
            problems: started.as_ref().err().map(|e| vec![proxy_core::ErrorChain(e).to_string()]).unwrap_or_default(),
            tries: 1,
            elapsed_ms: started.as_ref().map(|c| c.elapsed.as_millis() as u64).unwrap_or(0),
            sticky: false,
        };
        self.steps.push(step_start);
        if let Err(e) = started {
            return Err(Verdict::Fail(format!("initial sync: {}", proxy_core::ErrorChain(&e))));
        }
        if let Some(caps) = self.driver.capabilities() {
            let needed = required_capabilities(self.scenario);
            let missing = caps.missing(needed.iter());
            if !missing.is_empty() {
                return Err(Verdict::Unsupported(format!("backend lacks capabilities {missing:?}")));
            }
        }
        for entry in self.scenario.steps.clone() {
            let record = match &entry.step {
                Step::Probe { probe, expect } => self.probe_step(&entry.label, probe, expect, entry.within).await,
                Step::Update { update } => self.update_step(&entry.label, update, entry.within).await,
                Step::Churn { churn } => self.churn_step(&entry.label, churn, entry.within).await,
                Step::Wait { duration } => {
                    // A semantic wait (affinity timeouts), never a convergence wait.
                    tokio::time::sleep(*duration).await;
                    record(&entry.label, "wait", format!("{} ms", duration.as_millis()), String::new(), true, vec![], 0)
                }
                Step::Hold { hold, expect } => self.hold_step(&entry.label, hold, expect).await,
                Step::Check { name } => self.check_step(&entry.label, name).await,
                Step::Restart { restart } => self.restart_step(&entry.label, restart, entry.within).await,
                Step::AffinityExpiry { expiry, expect } => self.expiry_step(&entry.label, expiry, expect).await,
            };
            let passed = record.passed;
            let label = record.label.clone();
            let problems = record.problems.join("; ");
            self.steps.push(record);
            if !passed {
                return Err(Verdict::Fail(format!("step {label}: {problems}")));
            }
        }
        Ok(())
    }

    async fn inspect_now(&mut self) -> (Option<proxy_core::ProgrammedState>, Vec<String>) {
        let expected = self.snapshot().expected_state();
        match self.driver.inspect().await {
            Ok(Some(found)) => {
                let diffs = expected.diff(&found).iter().map(ToString::to_string).collect();
                (Some(found), diffs)
            }
            Ok(None) => (None, Vec::new()),
            Err(e) => (None, vec![format!("inspect() failed: {}", proxy_core::ErrorChain(&e))]),
        }
    }

    fn client(&self, name: &str) -> std::result::Result<&'static HostPlan, String> {
        addresses::host(name).ok_or_else(|| format!("unknown lab host {name:?}"))
    }

    /// Resolves a probe: destination, protocol, source address, and the core's prediction.
    fn prepare(
        &mut self,
        from: &str,
        to: &crate::scenario::Target,
        proto: Option<Proto>,
    ) -> std::result::Result<(SocketAddr, Proto, IpAddr, oracle::Prediction), String> {
        let host = self.client(from)?;
        let (dst, proto) = oracle::resolve(to, proto, &self.objects)?;
        let src = host.probe_source(dst.is_ipv6());
        let snapshot = self.snapshot();
        let prediction = oracle::predict(&snapshot, dst, proto, src, &self.nodeport_addresses);
        Ok((dst, proto, src, prediction))
    }

    async fn attempts(&self, from: &str, req: &AgentRequest) -> std::result::Result<Vec<Attempt>, String> {
        let agent = self.lab.agent(from).map_err(|e| e.to_string())?;
        match agent.request(req).await.map_err(|e| e.to_string())? {
            AgentResponse::Attempts { attempts } => Ok(attempts),
            AgentResponse::Ok => Ok(Vec::new()),
            AgentResponse::Error { message } => Err(message),
        }
    }

    async fn probe_step(
        &mut self,
        label: &str,
        probe: &Probe,
        expect: &Expectation,
        within: Option<Duration>,
    ) -> StepRecord {
        let (dst, proto, src, prediction) = match self.prepare(&probe.from, &probe.to, probe.protocol) {
            Ok(p) => p,
            Err(e) => {
                return record(
                    label,
                    "probe",
                    format!("{} → {:?}", probe.from, probe.to),
                    describe(expect),
                    false,
                    vec![e],
                    0,
                );
            }
        };
        let detail = format!("{} ({src}) → {dst}/{proto:?} ×{}", probe.from, probe.count);
        let mut problems = Vec::new();
        if let Err(e) = oracle::cross_check(expect, &prediction) {
            problems.push(format!("scenario disagrees with the core: {e}"));
        }
        let req = AgentRequest::Probe {
            proto,
            dst,
            src_ip: Some(src),
            src_port: probe.source_port,
            count: probe.count,
            timeout_ms: probe.timeout.map_or(DEFAULT_PROBE_TIMEOUT, |d| d.0).as_millis() as u64,
        };
        let srcctx = SourceContext { client: src, node_addresses: addresses::node1_addresses() };
        let waited = poll(self.bound(within), || async {
            let attempts = self.attempts(&probe.from, &req).await.map_err(|e| (vec![e], None))?;
            expect::check(expect, &srcctx, &attempts).map_err(|p| (p, Some(Observed::from_attempts(&attempts))))
        })
        .await;
        let (observed, passed) = match waited.result {
            Ok(o) => (Some(o), problems.is_empty()),
            Err((p, o)) => {
                problems.extend(p);
                (o, false)
            }
        };
        StepRecord {
            label: label.to_string(),
            kind: "probe".into(),
            detail,
            expected: describe(expect),
            observed,
            passed,
            problems,
            tries: waited.attempts,
            elapsed_ms: waited.elapsed.as_millis() as u64,
            sticky: expect.sticky,
        }
    }

    /// Applies events to the oracle's tracker and to the backend.
    async fn push_events(&mut self, events: Vec<ProxyEvent>, bound: Duration) -> std::result::Result<Duration, String> {
        for ev in &events {
            self.tracker.apply(ev.clone());
        }
        let expected = self.snapshot().expected_state();
        self.driver
            .apply(events, &self.objects, &expected, bound)
            .await
            .map(|c| c.elapsed)
            .map_err(|e| proxy_core::ErrorChain(&e).to_string())
    }

    async fn update_step(&mut self, label: &str, update: &Update, within: Option<Duration>) -> StepRecord {
        let mut events = Vec::new();
        let mut problems = Vec::new();
        for obj in &update.apply {
            match self.objects.insert(obj.clone()) {
                Ok(key) => events.extend(self.objects.get(&key).and_then(|o| event_for(o, false))),
                Err(e) => problems.push(e),
            }
        }
        for d in &update.delete {
            let Some(kind) = Kind::parse(&d.kind) else {
                problems.push(format!("unsupported kind {}", d.kind));
                continue;
            };
            match self.objects.remove(&(kind, d.namespace.clone(), d.name.clone())) {
                Some(obj) => events.extend(event_for(&obj, true)),
                None => problems.push(format!("no {} {}/{} to delete", d.kind, d.namespace, d.name)),
            }
        }
        let detail = format!("apply {} / delete {} objects", update.apply.len(), update.delete.len());
        let bound = self.bound(within);
        let expected = format!("converged within {} ms", bound.as_millis());
        if !problems.is_empty() {
            return record(label, "update", detail, expected, false, problems, 0);
        }
        match self.push_events(events, bound).await {
            Ok(elapsed) => record(label, "update", detail, expected, true, vec![], elapsed.as_millis() as u64),
            Err(e) => record(label, "update", detail, expected, false, vec![e], bound.as_millis() as u64),
        }
    }

    async fn churn_step(&mut self, label: &str, churn: &Churn, within: Option<Duration>) -> StepRecord {
        let bound = self.bound(within);
        let expected = format!(
            "{} updates, then {:?}, converged within {} ms",
            churn.updates,
            churn.final_hosts,
            bound.as_millis()
        );
        let detail = format!("EndpointSlice {}", churn.slice);
        let (ns, name) = churn.slice.split_once('/').unwrap_or(("default", &churn.slice));
        let key = (Kind::EndpointSlice, ns.to_string(), name.to_string());
        let Some(base) = self.objects.get(&key).cloned() else {
            return record(
                label,
                "churn",
                detail,
                expected,
                false,
                vec![format!("no EndpointSlice {}", churn.slice)],
                0,
            );
        };
        let v6 = base.get("addressType").and_then(Value::as_str) == Some("IPv6");
        let mut rng = XorShift::new(&self.scenario.name);
        let mut events = Vec::new();
        let mut last = base.clone();
        for i in 0..churn.updates {
            let subset: Vec<&String> = churn.pool.iter().filter(|_| rng.next().is_multiple_of(2)).collect();
            let subset = if subset.is_empty() { vec![&churn.pool[i as usize % churn.pool.len()]] } else { subset };
            last = with_endpoints(&base, &subset, v6);
            events.extend(event_for(&last, false));
        }
        let finals: Vec<&String> = churn.final_hosts.iter().collect();
        let final_obj = with_endpoints(&base, &finals, v6);
        if final_obj != last {
            events.extend(event_for(&final_obj, false));
        }
        if let Err(e) = self.objects.insert(final_obj) {
            return record(label, "churn", detail, expected, false, vec![e], 0);
        }
        let n = events.len();
        match self.push_events(events, bound).await {
            Ok(elapsed) => record(
                label,
                "churn",
                format!("{detail}: {n} events"),
                expected,
                true,
                vec![],
                elapsed.as_millis() as u64,
            ),
            Err(e) => record(label, "churn", detail, expected, false, vec![e], bound.as_millis() as u64),
        }
    }

    async fn hold_step(&mut self, label: &str, hold: &Hold, expect: &Expectation) -> StepRecord {
        let (dst, proto, src, prediction) = match self.prepare(&hold.from, &hold.to, Some(Proto::Tcp)) {
            Ok(p) => p,
            Err(e) => return record(label, "hold", hold.name.clone(), describe(expect), false, vec![e], 0),
        };
        let detail = format!("{} ({src}) → {dst}/{proto:?}, kept as {:?}", hold.from, hold.name);
        let mut problems = Vec::new();
        if let Err(e) = oracle::cross_check(expect, &prediction) {
            problems.push(format!("scenario disagrees with the core: {e}"));
        }
        let req = AgentRequest::Open {
            id: hold.name.clone(),
            proto,
            dst,
            src_ip: Some(src),
            timeout_ms: DEFAULT_PROBE_TIMEOUT.as_millis() as u64,
        };
        let mut relaxed = expect.clone();
        relaxed.sticky = true; // one connection reaches one endpoint
        let srcctx = SourceContext { client: src, node_addresses: addresses::node1_addresses() };
        // Retried within the patience: a black-box proxy may still be converging.
        let waited = poll(patience(), || async {
            let attempts = self.attempts(&hold.from, &req).await.map_err(|e| (vec![e], Vec::new()))?;
            match expect::check(&relaxed, &srcctx, &attempts) {
                Ok(_) => Ok(attempts),
                Err(p) => Err((p, attempts)),
            }
        })
        .await;
        let attempts = match waited.result {
            Ok(a) => a,
            Err((p, a)) => {
                problems.extend(p);
                a
            }
        };
        if let Some(Outcome::Reply { host, .. }) = attempts.first().map(|a| &a.outcome) {
            self.held.insert(hold.name.clone(), (hold.from.clone(), host.clone()));
        }
        StepRecord {
            label: label.into(),
            kind: "hold".into(),
            detail,
            expected: describe(expect),
            observed: Some(Observed::from_attempts(&attempts)),
            passed: problems.is_empty(),
            problems,
            tries: waited.attempts,
            elapsed_ms: waited.elapsed.as_millis() as u64,
            sticky: false,
        }
    }

    async fn check_step(&mut self, label: &str, name: &str) -> StepRecord {
        let Some((from, host)) = self.held.get(name).cloned() else {
            return record(
                label,
                "check",
                name.into(),
                "held connection answers".into(),
                false,
                vec![format!("connection {name:?} was never established")],
                0,
            );
        };
        let expected = format!("held connection {name:?} still answers from {host}");
        let req = AgentRequest::Exchange { id: name.to_string(), timeout_ms: DEFAULT_PROBE_TIMEOUT.as_millis() as u64 };
        let start = Instant::now();
        let attempts = match self.attempts(&from, &req).await {
            Ok(a) => a,
            Err(e) => return record(label, "check", name.into(), expected, false, vec![e], 0),
        };
        let ok = matches!(attempts.first().map(|a| &a.outcome), Some(Outcome::Reply { host: h, .. }) if *h == host);
        StepRecord {
            label: label.into(),
            kind: "check".into(),
            detail: format!("{from}: connection {name:?}"),
            expected,
            observed: Some(Observed::from_attempts(&attempts)),
            passed: ok,
            problems: if ok { vec![] } else { vec!["the established connection was broken or moved".into()] },
            tries: 1,
            elapsed_ms: start.elapsed().as_millis() as u64,
            sticky: false,
        }
    }

    async fn restart_step(&mut self, label: &str, restart: &Restart, within: Option<Duration>) -> StepRecord {
        let bound = self.bound(within);
        let mut expected = format!("backend restarted and converged within {} ms", bound.as_millis());
        let mut problems = Vec::new();
        let start = Instant::now();
        let prepared = match &restart.probe_during {
            None => None,
            Some(p) => match self.prepare(&p.from, &p.to, p.protocol) {
                Ok(x) => Some((p.clone(), x)),
                Err(e) => return record(label, "restart", String::new(), expected, false, vec![e], 0),
            },
        };
        let done = AtomicBool::new(false);
        let lab = self.lab;
        let prober = async {
            let mut all = Vec::new();
            let Some((p, (dst, proto, src, _))) = &prepared else { return all };
            let Ok(agent) = lab.agent(&p.from) else { return all };
            let req = AgentRequest::Probe {
                proto: *proto,
                dst: *dst,
                src_ip: Some(*src),
                src_port: None,
                count: 1,
                timeout_ms: DEFAULT_PROBE_TIMEOUT.as_millis() as u64,
            };
            // At least a few connections, and keep going until the restart is over.
            while all.len() < 3 || !done.load(Ordering::SeqCst) {
                match agent.request(&req).await {
                    Ok(AgentResponse::Attempts { attempts }) => all.extend(attempts),
                    _ => break,
                }
            }
            all
        };
        let objects = self.objects.clone();
        let expected_state = self.snapshot().expected_state();
        let restarter = async {
            let r = self.driver.restart(&objects, &expected_state, bound).await;
            done.store(true, Ordering::SeqCst);
            r
        };
        let (attempts, restarted) = futures::join!(prober, restarter);
        if let Err(e) = restarted {
            problems.push(format!("restart: {}", proxy_core::ErrorChain(&e)));
        }
        let mut observed = None;
        if let Some((p, (dst, proto, src, prediction))) = &prepared {
            let allowed: BTreeSet<String> = prediction.endpoints.keys().cloned().collect();
            expected.push_str(&format!(
                "; every new connection {} → {dst}/{proto:?} during it answered from {allowed:?}",
                p.from
            ));
            let e = Expectation { endpoints: Some(allowed.clone()), ..Default::default() };
            let o = Observed::from_attempts(&attempts);
            let strays = o.hosts.keys().any(|h| !allowed.contains(h));
            if allowed.is_empty() || o.replies() != o.attempts || strays {
                problems.push(format!(
                    "connections during the restart failed or went astray ({} of {} answered)",
                    o.replies(),
                    o.attempts
                ));
            }
            let _ = (e, src);
            observed = Some(o);
        }
        StepRecord {
            label: label.into(),
            kind: "restart".into(),
            detail: "stop the backend without cleanup, start a fresh instance".into(),
            expected,
            observed,
            passed: problems.is_empty(),
            problems,
            tries: 1,
            elapsed_ms: start.elapsed().as_millis() as u64,
            sticky: false,
        }
    }

    async fn expiry_step(&mut self, label: &str, expiry: &AffinityExpiry, expect: &Expectation) -> StepRecord {
        let (dst, proto, src, prediction) = match self.prepare(&expiry.from, &expiry.to, expiry.protocol) {
            Ok(p) => p,
            Err(e) => return record(label, "affinityExpiry", String::new(), describe(expect), false, vec![e], 0),
        };
        let detail =
            format!("{} ({src}) → {dst}/{proto:?}: up to {} rounds, {} apart", expiry.from, expiry.rounds, expiry.wait);
        let mut problems = Vec::new();
        if let Err(e) = oracle::cross_check(expect, &prediction) {
            problems.push(format!("scenario disagrees with the core: {e}"));
        }
        let allowed = expect.endpoints.clone().unwrap_or_default();
        let req = AgentRequest::Probe {
            proto,
            dst,
            src_ip: Some(src),
            src_port: None,
            count: 1,
            timeout_ms: DEFAULT_PROBE_TIMEOUT.as_millis() as u64,
        };
        let start = Instant::now();
        let mut all = Vec::new();
        let mut rounds = 0;
        while rounds < expiry.rounds {
            rounds += 1;
            match self.attempts(&expiry.from, &req).await {
                Ok(a) => all.extend(a),
                Err(e) => {
                    problems.push(e);
                    break;
                }
            }
            if expect::distinct_hosts(&all).len() > 1 {
                break;
            }
            tokio::time::sleep(expiry.wait.0).await;
        }
        let seen = expect::distinct_hosts(&all);
        if seen.len() < 2 {
            problems
                .push(format!("affinity never expired: {rounds} rounds {} apart all reached {seen:?}", expiry.wait));
        }
        if let Some(stray) = seen.iter().find(|h| !allowed.contains(*h)) {
            problems.push(format!("answer from {stray}, outside {allowed:?}"));
        }
        StepRecord {
            label: label.into(),
            kind: "affinityExpiry".into(),
            detail,
            expected: format!("after the timeout, another endpoint of {allowed:?} is picked"),
            observed: Some(Observed::from_attempts(&all)),
            passed: problems.is_empty(),
            problems,
            tries: rounds,
            elapsed_ms: start.elapsed().as_millis() as u64,
            sticky: false,
        }
    }
}

fn record(
    label: &str,
    kind: &str,
    detail: String,
    expected: String,
    passed: bool,
    problems: Vec<String>,
    elapsed_ms: u64,
) -> StepRecord {
    StepRecord {
        label: label.into(),
        kind: kind.into(),
        detail,
        expected,
        observed: None,
        passed,
        problems,
        tries: 1,
        elapsed_ms,
        sticky: false,
    }
}

/// A copy of an EndpointSlice with its endpoints replaced by lab hosts (ready, on their node).
fn with_endpoints(base: &Value, hosts: &[&String], v6: bool) -> Value {
    let mut obj = base.clone();
    let eps: Vec<Value> = hosts
        .iter()
        .filter_map(|h| addresses::host(h))
        .map(|h| {
            serde_json::json!({
                "addresses": [h.ip(v6).to_string()],
                "conditions": {"ready": true},
                "nodeName": h.node.unwrap_or(addresses::NODE1),
            })
        })
        .collect();
    if let Some(o) = obj.as_object_mut() {
        o.insert("endpoints".into(), Value::Array(eps));
    }
    obj
}

/// A small deterministic generator: churn is reproducible per scenario.
struct XorShift(u64);

impl XorShift {
    fn new(seed: &str) -> Self {
        let h = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        XorShift(h | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Checks a scenario against the core without any backend: walks its steps
/// through a change tracker and cross-checks every expectation with
/// `flow()`. Returns the disagreements (empty when the file is consistent).
pub fn lint(scenario: &Scenario) -> Vec<String> {
    let (masq, npa) = scenario_settings(scenario);
    let mut tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig {
        node_name: addresses::NODE1.into(),
        families: scenario.families(),
        masquerade: masq,
    }));
    for ev in scenario.objects.initial_events() {
        tracker.apply(ev);
    }
    let mut objects = scenario.objects.clone();
    let mut out = Vec::new();
    let check = |out: &mut Vec<String>,
                 label: &str,
                 from: &str,
                 to: &crate::scenario::Target,
                 proto: Option<Proto>,
                 expect: &Expectation,
                 objects: &crate::scenario::ObjectStore,
                 tracker: &mut ChangeTracker| {
        let Some(host) = addresses::host(from) else { return out.push(format!("{label}: unknown host {from}")) };
        match oracle::resolve(to, proto, objects) {
            Err(e) => out.push(format!("{label}: {e}")),
            Ok((dst, proto)) => {
                let src = host.probe_source(dst.is_ipv6());
                let p = oracle::predict(&tracker.snapshot(), dst, proto, src, &npa);
                if let Err(e) = oracle::cross_check(expect, &p) {
                    out.push(format!("{label}: {from} → {dst}/{proto:?}: {e}"));
                }
            }
        }
    };
    for entry in &scenario.steps {
        match &entry.step {
            Step::Probe { probe, expect } => {
                check(&mut out, &entry.label, &probe.from, &probe.to, probe.protocol, expect, &objects, &mut tracker)
            }
            Step::Hold { hold, expect } => {
                check(&mut out, &entry.label, &hold.from, &hold.to, Some(Proto::Tcp), expect, &objects, &mut tracker)
            }
            Step::AffinityExpiry { expiry, expect } => {
                check(&mut out, &entry.label, &expiry.from, &expiry.to, expiry.protocol, expect, &objects, &mut tracker)
            }
            Step::Update { update } => {
                for obj in &update.apply {
                    if let Ok(key) = objects.insert(obj.clone())
                        && let Some(ev) = objects.get(&key).and_then(|o| event_for(o, false))
                    {
                        tracker.apply(ev);
                    }
                }
                for d in &update.delete {
                    if let Some(kind) = Kind::parse(&d.kind)
                        && let Some(obj) = objects.remove(&(kind, d.namespace.clone(), d.name.clone()))
                        && let Some(ev) = event_for(&obj, true)
                    {
                        tracker.apply(ev);
                    }
                }
            }
            Step::Churn { churn } => {
                let (ns, name) = churn.slice.split_once('/').unwrap_or(("default", &churn.slice));
                if let Some(base) = objects.get(&(Kind::EndpointSlice, ns.to_string(), name.to_string())).cloned() {
                    let v6 = base.get("addressType").and_then(Value::as_str) == Some("IPv6");
                    let finals: Vec<&String> = churn.final_hosts.iter().collect();
                    let obj = with_endpoints(&base, &finals, v6);
                    if let Some(ev) = event_for(&obj, false) {
                        tracker.apply(ev);
                    }
                    let _ = objects.insert(obj);
                }
            }
            Step::Restart { restart } => {
                if let Some(p) = &restart.probe_during
                    && let Some(host) = addresses::host(&p.from)
                    && let Ok((dst, proto)) = oracle::resolve(&p.to, p.protocol, &objects)
                {
                    let pred = oracle::predict(&tracker.snapshot(), dst, proto, host.probe_source(dst.is_ipv6()), &npa);
                    if pred.verdict != crate::scenario::ExpectedVerdict::Forward {
                        out.push(format!("{}: probeDuring goes nowhere ({:?})", entry.label, pred.verdict));
                    }
                }
            }
            Step::Wait { .. } | Step::Check { .. } => {}
        }
    }
    out
}

/// Loads scenarios and keeps those whose name contains one of `filters`.
pub fn select(scenarios: Vec<Scenario>, filters: &[String]) -> Vec<Scenario> {
    if filters.is_empty() {
        return scenarios;
    }
    scenarios.into_iter().filter(|s| filters.iter().any(|f| s.name.contains(f.as_str()))).collect()
}

/// The union of echo ports over scenarios.
pub fn echo_ports(scenarios: &[Scenario]) -> crate::agent::EchoPorts {
    let mut ports = crate::agent::EchoPorts::default();
    for s in scenarios {
        let p = s.echo_ports();
        ports.tcp.extend(p.tcp);
        ports.udp.extend(p.udp);
        ports.sctp.extend(p.sctp);
    }
    ports
}

/// Errors that stop a run before any scenario (for the CLI).
pub fn setup_error(e: ConformanceError) -> String {
    proxy_core::ErrorChain(&e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_documented_upstream_difference_is_reported_as_such_and_a_stale_one_fails() {
        let path = crate::builtin_scenarios_dir().join("loadbalancer-source-ranges-from-node.yaml");
        let scenario = Scenario::load(&path).expect("scenario loads");
        let documented_reason = scenario.upstream_differs.as_ref().and_then(|d| d.reason_for("iptables"));
        assert!(documented_reason.is_some_and(|r| r.contains("docs/semantics.md")));
        let result = |backend: &str, status: Status| ScenarioResult {
            backend: backend.into(),
            status,
            ..unsupported(&scenario, backend, String::new())
        };
        let failed = || Status::Fail { reason: "step probe #0: 20 of 20 attempts got no answer".into() };
        match upstream_verdict(&scenario, result("kube-proxy-iptables", failed())).status {
            Status::Differs { documented, reason } => {
                assert_eq!(Some(documented.as_str()), documented_reason);
                assert!(reason.contains("no answer"), "{reason}");
            }
            other => panic!("not a documented difference: {other:?}"),
        }
        let stale = upstream_verdict(&scenario, result("kube-proxy-nftables", Status::Pass)).status;
        assert!(matches!(&stale, Status::Fail { reason } if reason.contains("remove upstreamDiffers")), "{stale:?}");
        // switchyard's own columns are judged as always.
        assert_eq!(upstream_verdict(&scenario, result("iptables", failed())).status, failed());
        assert_eq!(
            upstream_verdict(&scenario, result("iptables@switchyard+apiserver", Status::Pass)).status,
            Status::Pass
        );
    }

    #[test]
    fn a_difference_documented_for_one_upstream_mode_holds_only_for_that_mode() {
        let path = crate::builtin_scenarios_dir().join("hairpin-remote-etp-local.yaml");
        let scenario = Scenario::load(&path).expect("scenario loads");
        let result = |backend: &str, status: Status| ScenarioResult {
            backend: backend.into(),
            status,
            ..unsupported(&scenario, backend, String::new())
        };
        let failed = || Status::Fail { reason: "step probe #0: 20 of 20 attempts got no answer".into() };
        assert!(matches!(
            upstream_verdict(&scenario, result("kube-proxy-nftables", failed())).status,
            Status::Differs { documented, .. } if documented.contains("docs/semantics.md")
        ));
        // The iptables mode is not said to differ: its failure is a failure, its pass a pass.
        assert_eq!(upstream_verdict(&scenario, result("kube-proxy-iptables", failed())).status, failed());
        assert_eq!(upstream_verdict(&scenario, result("kube-proxy-iptables", Status::Pass)).status, Status::Pass);
        let stale = upstream_verdict(&scenario, result("kube-proxy-nftables", Status::Pass)).status;
        assert!(matches!(&stale, Status::Fail { reason } if reason.contains("remove upstreamDiffers")), "{stale:?}");
    }

    #[test]
    fn every_builtin_scenario_agrees_with_the_core() {
        let scenarios = Scenario::load_dir(&crate::builtin_scenarios_dir()).expect("scenarios load");
        let problems: Vec<String> =
            scenarios.iter().flat_map(|s| lint(s).into_iter().map(move |p| format!("{}: {p}", s.name))).collect();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn lint_catches_a_scenario_that_contradicts_the_core() {
        let text = r#"
name: wrong
description: claims a drop where the core rejects
objects:
  - {apiVersion: v1, kind: Service, metadata: {name: web}, spec: {clusterIPs: [10.96.0.10], ports: [{port: 80}]}}
steps:
  - probe: {from: client1, to: {service: web, via: clusterIP}, count: 1}
    expect: {dropped: true}
"#;
        let s = Scenario::parse(text, std::path::Path::new("w.yaml")).expect("parses");
        let problems = lint(&s);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("Refused"), "{problems:?}");
    }

    #[test]
    fn churn_endpoints_are_lab_hosts_on_their_nodes() {
        let base = serde_json::json!({"kind": "EndpointSlice", "addressType": "IPv4", "endpoints": []});
        let a1 = "a1".to_string();
        let b2 = "b2".to_string();
        let v = with_endpoints(&base, &[&a1, &b2], false);
        let eps = v["endpoints"].as_array().cloned().unwrap_or_default();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0]["addresses"][0], "10.244.1.10");
        assert_eq!(eps[1]["nodeName"], "node2");
    }

    #[test]
    fn the_generator_is_deterministic() {
        let a: Vec<u64> = {
            let mut r = XorShift::new("x");
            (0..5).map(|_| r.next()).collect()
        };
        let b: Vec<u64> = {
            let mut r = XorShift::new("x");
            (0..5).map(|_| r.next()).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn sections_get_the_cgroup() {
        let v = serde_json::json!({"cgroup": "{cgroup}", "n": 1});
        assert_eq!(
            substitute(&v, "/sys/fs/cgroup/unified/x"),
            serde_json::json!({"cgroup": "/sys/fs/cgroup/unified/x", "n": 1})
        );
    }
}
