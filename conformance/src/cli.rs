//! The `switchyard-conformance` command line.
//!
//! A plugin author builds their own binary around their registry:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let mut registry = conformance::default_registry();
//!     // registry.register(my_backend::factory()).expect("unique mode name");
//!     conformance::cli::main_with_registry(registry)
//! }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use proxy_core::Registry;
use tracing::{error, info};

use crate::agent::{AGENT_SUBCOMMAND, AgentArgs};
use crate::apiserver::ReferenceBinaries;
use crate::apisource::ApiLab;
use crate::driver::{DriverFactory, ExternalBinary, InProcess, ObjectSource};
use crate::kubeproxy::KubeProxyBinary;
use crate::lab::{Lab, LabConfig};
use crate::runner::{self, SuiteConfig};
use crate::scenario::Scenario;

/// Exit codes.
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_SETUP: u8 = 3;
pub const EXIT_INTERRUPTED: u8 = 130;

/// Runs the switchyard conformance scenarios against dataplane backends in a
/// network-namespace lab and reports a scenario × backend matrix.
#[derive(Debug, Parser)]
#[command(name = "switchyard-conformance", version)]
pub struct Args {
    /// A backend to run in-process, by its proxy-mode name (repeatable).
    #[arg(long = "backend", value_name = "MODE")]
    pub backends: Vec<String>,
    /// A backend to run as a black box inside node1 (repeatable): a mode of
    /// the `switchyard` binary, or upstream kube-proxy as `kube-proxy-iptables`,
    /// `kube-proxy-nftables` or `kube-proxy-ipvs` (against the lab's API server).
    #[arg(long = "binary-backend", value_name = "MODE")]
    pub binary_backends: Vec<String>,
    /// Where binary backends of switchyard read the scenario objects: a
    /// manifest file (`file`), or the lab's real API server (`apiserver`:
    /// upstream etcd and kube-apiserver from `./x reference`).
    #[arg(long, value_name = "SOURCE", default_value = "file", value_parser = ["file", "apiserver"])]
    pub source: String,
    /// The kube-proxy binary for `kube-proxy-*` backends (default: the `./x reference` build).
    #[arg(long, value_name = "PATH")]
    pub kube_proxy_bin: Option<PathBuf>,
    /// Extra arguments for kube-proxy (repeatable).
    #[arg(long = "kube-proxy-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub kube_proxy_args: Vec<String>,
    /// The `switchyard` binary for --binary-backend.
    #[arg(long, value_name = "PATH", default_value = "switchyard")]
    pub switchyard_bin: PathBuf,
    /// Extra arguments for the `switchyard` binary (repeatable).
    #[arg(long = "switchyard-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub switchyard_args: Vec<String>,
    /// A backend's configuration section as JSON, `MODE=JSON`; `{cgroup}` is
    /// replaced by the lab's cgroup path (repeatable).
    #[arg(long = "section", value_name = "MODE=JSON")]
    pub sections: Vec<String>,
    /// The directory of scenario files.
    #[arg(long, value_name = "DIR", env = "SWITCHYARD_CONFORMANCE_SCENARIOS")]
    pub scenarios: Option<PathBuf>,
    /// Run only scenarios whose name contains this (repeatable).
    #[arg(long = "filter", value_name = "NAME")]
    pub filters: Vec<String>,
    /// Write the report as JSON.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the report as Markdown.
    #[arg(long, value_name = "PATH")]
    pub markdown: Option<PathBuf>,
    /// Fail scenarios whose backend inspect() differs from the core's expected state.
    #[arg(long)]
    pub strict_inspect: bool,
    /// List the scenarios and registered backends, then exit.
    #[arg(long)]
    pub list: bool,
    /// Check the scenarios against proxy-core's flow table (no root, no
    /// backend), then exit: non-zero when a scenario contradicts the core.
    #[arg(long)]
    pub lint: bool,
    /// Remove namespaces and cgroups left by runs that were killed, then exit.
    #[arg(long)]
    pub gc: bool,
    /// Log filter (tracing's env-filter syntax).
    #[arg(long, default_value = "info", env = "SWITCHYARD_CONFORMANCE_LOG")]
    pub log: String,
}

/// Finds the scenario directory: the flag, then `conformance/scenarios`
/// under the current directory, then `scenarios` beside the binary, then the
/// crate's own (development builds).
pub fn scenario_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = flag {
        return dir;
    }
    let candidates = [
        Some(PathBuf::from("conformance/scenarios")),
        std::env::current_exe().ok().and_then(|e| e.parent().map(|p| p.join("scenarios"))),
    ];
    candidates.into_iter().flatten().find(|p| p.is_dir()).unwrap_or_else(crate::builtin_scenarios_dir)
}

/// Sections built-in modes get when no `--section` names them: the eBPF
/// backend's socket hooks go on the lab's cgroup.
const DEFAULT_SECTIONS: &[(&str, &str)] = &[("ebpf", r#"{"cgroupPath":"{cgroup}"}"#)];

fn parse_sections(raw: &[String]) -> Result<BTreeMap<String, serde_json::Value>, String> {
    raw.iter()
        .map(|s| {
            let (mode, json) = s.split_once('=').ok_or_else(|| format!("--section {s:?}: expected MODE=JSON"))?;
            let v = serde_json::from_str(json).map_err(|e| format!("--section {mode}: {e}"))?;
            Ok((mode.to_string(), v))
        })
        .collect()
}

/// The whole program: agent subcommand, or a suite run. Returns the exit code.
pub fn main_with_registry(registry: Registry) -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(AGENT_SUBCOMMAND) {
        return agent_main(&argv[2..]);
    }
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    runtime.block_on(run(args, registry))
}

/// Runs the hidden agent subcommand (`argv[2..]`); every binary that creates a lab calls it first.
pub fn agent_main(args: &[String]) -> ExitCode {
    match AgentArgs::parse(args).map_err(std::io::Error::other).and_then(crate::agent::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The runner reads stdout; the reason goes to stderr, which it inherits.
            let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("agent: {e}\n").as_bytes());
            ExitCode::from(EXIT_SETUP)
        }
    }
}

#[allow(clippy::print_stdout, reason = "the binary's product is the report on stdout")]
async fn run(args: Args, registry: Registry) -> ExitCode {
    info!(version = env!("CARGO_PKG_VERSION"), modes = ?registry.modes(), "switchyard-conformance");
    if args.gc {
        for r in crate::lab::collect_stale() {
            println!("removed {r}");
        }
        return ExitCode::SUCCESS;
    }
    let dir = scenario_dir(args.scenarios.clone());
    let scenarios = match Scenario::load_dir(&dir) {
        Ok(s) => runner::select(s, &args.filters),
        Err(e) => {
            error!(error = %proxy_core::ErrorChain(&e), "cannot load scenarios");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.lint {
        let mut bad = 0;
        for s in &scenarios {
            for p in runner::lint(s) {
                bad += 1;
                println!("{}: {p}", s.path.display());
            }
        }
        println!("{} scenarios checked, {bad} disagreements with the core", scenarios.len());
        return if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) };
    }
    if args.list {
        println!("backends: {}", registry.modes().join(", "));
        for s in &scenarios {
            println!("{:40} {}", s.name, s.description);
        }
        return ExitCode::SUCCESS;
    }
    let mut backends: Vec<Arc<dyn DriverFactory>> = Vec::new();
    for mode in &args.backends {
        match registry.get(mode) {
            Ok(f) => backends.push(Arc::new(InProcess { factory: f.clone() })),
            Err(e) => {
                error!(error = %e, "unknown backend");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    for name in &args.binary_backends {
        if name.starts_with(crate::kubeproxy::LABEL_PREFIX) && KubeProxyBinary::mode_of(name).is_none() {
            error!(backend = %name, "unknown kube-proxy backend: kube-proxy-iptables, kube-proxy-nftables or kube-proxy-ipvs");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let needs_api =
        args.source == "apiserver" || args.binary_backends.iter().any(|b| KubeProxyBinary::mode_of(b).is_some());
    if backends.is_empty() && args.binary_backends.is_empty() {
        error!(known = ?registry.modes(), "no backend selected: pass --backend MODE or --binary-backend MODE");
        return ExitCode::from(EXIT_USAGE);
    }
    if scenarios.is_empty() {
        error!(dir = %dir.display(), filters = ?args.filters, "no scenario selected");
        return ExitCode::from(EXIT_USAGE);
    }
    let sections = match parse_sections(&args.sections) {
        Ok(mut s) => {
            for (mode, json) in DEFAULT_SECTIONS {
                if let (false, Ok(v)) = (s.contains_key(*mode), serde_json::from_str(json)) {
                    s.insert((*mode).to_string(), v);
                }
            }
            s
        }
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let bins = if needs_api {
        match ReferenceBinaries::locate() {
            Ok(b) => Some(b),
            Err(e) => {
                error!(error = %e, "the API server source and kube-proxy backends need the reference binaries");
                return ExitCode::from(EXIT_SETUP);
            }
        }
    } else {
        None
    };
    info!(scenarios = scenarios.len(), dir = %dir.display(), source = %args.source, "running");

    // Handlers first: from here on SIGINT/SIGTERM no longer kill the process
    // outright, they drop the suite future below.
    let interrupted = match shutdown_signal() {
        Ok(f) => f,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    // The lab lives inside this future: Ctrl-C or SIGTERM drops it, and
    // dropping the lab tears it down (as does a panic, by unwinding).
    let suite = async {
        let lab_config = LabConfig::current_exe(runner::echo_ports(&scenarios))?;
        let lab = Lab::create(lab_config).await?;
        // The control plane after the lab (its relay listens in node1), dropped before it.
        let api = match &bins {
            Some(bins) => match ApiLab::start(&lab, bins).await {
                Ok(api) => Some(Arc::new(api)),
                Err(e) => {
                    lab.teardown().await;
                    return Err(e);
                }
            },
            None => None,
        };
        let config = SuiteConfig {
            backends: binary_backends(&args, &backends, api.as_ref(), &bins, lab.info().ipv6),
            sections,
            strict_inspect: args.strict_inspect,
        };
        info!(?config, "backends");
        let report = runner::run_suite(&lab, &scenarios, &config).await;
        drop(config);
        drop(api);
        lab.teardown().await;
        Ok::<_, crate::ConformanceError>(report)
    };
    let report = tokio::select! {
        r = suite => r,
        _ = interrupted => {
            error!("interrupted; the lab was torn down");
            return ExitCode::from(EXIT_INTERRUPTED);
        }
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            error!(error = %proxy_core::ErrorChain(&e), "cannot build the lab");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    print!("{}", report.table());
    let mut code = if report.failed() { ExitCode::from(EXIT_FAILED) } else { ExitCode::SUCCESS };
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            error!(path = %path.display(), error = %e, "cannot write the JSON report");
            code = ExitCode::from(EXIT_SETUP);
        }
    }
    if let Some(path) = &args.markdown
        && let Err(e) = std::fs::write(path, report.markdown())
    {
        error!(path = %path.display(), error = %e, "cannot write the Markdown report");
        code = ExitCode::from(EXIT_SETUP);
    }
    code
}

/// The in-process backends, then the binary ones in the order given: switchyard
/// with the chosen source, or upstream kube-proxy against the API server.
fn binary_backends(
    args: &Args,
    in_process: &[Arc<dyn DriverFactory>],
    api: Option<&Arc<ApiLab>>,
    bins: &Option<ReferenceBinaries>,
    ipv6: bool,
) -> Vec<Arc<dyn DriverFactory>> {
    let mut all = in_process.to_vec();
    for name in &args.binary_backends {
        if let (Some(mode), Some(api)) = (KubeProxyBinary::mode_of(name), api) {
            let binary = args
                .kube_proxy_bin
                .clone()
                .or_else(|| bins.as_ref().map(ReferenceBinaries::kube_proxy))
                .unwrap_or_else(|| PathBuf::from("kube-proxy"));
            all.push(Arc::new(KubeProxyBinary {
                binary,
                mode: mode.to_string(),
                api: api.clone(),
                ipv6,
                extra_args: args.kube_proxy_args.clone(),
            }));
            continue;
        }
        let mut spec = ExternalBinary::new(args.switchyard_bin.clone(), name.clone(), args.switchyard_args.clone());
        if let (true, Some(api)) = (args.source == "apiserver", api) {
            spec.source = ObjectSource::ApiServer(api.clone());
        }
        all.push(Arc::new(spec));
    }
    all
}

/// Installs SIGINT and SIGTERM handlers now; the future completes on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        let a = Args::try_parse_from([
            "switchyard-conformance",
            "--backend",
            "iptables",
            "--backend",
            "ebpf",
            "--filter",
            "clusterip",
            "--json",
            "r.json",
            "--section",
            "ebpf={\"cgroup\":\"{cgroup}\"}",
        ])
        .expect("parses");
        assert_eq!(a.backends, ["iptables", "ebpf"]);
        assert_eq!(a.filters, ["clusterip"]);
        let s = parse_sections(&a.sections).expect("sections");
        assert_eq!(s["ebpf"]["cgroup"], "{cgroup}");
        assert!(parse_sections(&["nojson".to_string()]).is_err());
    }

    #[test]
    fn the_builtin_scenarios_load() {
        let s = Scenario::load_dir(&crate::builtin_scenarios_dir()).expect("scenarios load");
        assert!(s.len() >= 40, "{} scenarios", s.len());
    }
}
