//! Drivers: how the runner makes a proxy program node1.
//!
//! - [`InProcessDriver`] builds a backend from a [`BackendFactory`] (found
//!   in a [`proxy_core::Registry`]) and drives it through proxy-core's
//!   [`Proxier`], exactly as the daemon does. Convergence is awaited on the
//!   proxier's synced-generation watch.
//! - [`ExternalDriver`] runs a `switchyard` binary as a black box inside
//!   node1's namespace with the file source, rewriting the manifest file on
//!   every update. Convergence is observed only through probes (which the
//!   runner retries within their bound).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use proxy_core::health::ProxyHealth;
use proxy_core::{
    BackendContext, BackendFactory, Capabilities, ChangeTracker, DataplaneError, PlannerConfig, ProgrammedState,
    Proxier, ProxyEvent, SyncRunner, SyncRunnerConfig, SyncTrigger, TrackerConfig,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::apisource::{ApiLab, without_api_service};
use crate::error::{ConformanceError, Result};
use crate::scenario::ObjectStore;

/// How long a convergence took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Converged {
    pub elapsed: Duration,
}

/// Something that makes node1 follow a set of objects.
#[async_trait]
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// The backend's label in reports (`iptables`, `iptables@switchyard`).
    fn label(&self) -> String;

    /// What the backend declares; `None` for a black box (every scenario runs).
    fn capabilities(&self) -> Option<Capabilities>;

    /// Programs the initial objects and waits for convergence (within
    /// `bound`). `expected` is what `inspect()` reports once converged (the
    /// core's `Snapshot::expected_state()`), for drivers that can only
    /// observe convergence from outside.
    async fn start(&mut self, objects: &ObjectStore, expected: &ProgrammedState, bound: Duration) -> Result<Converged>;

    /// Applies events (`objects` is the state after them) and waits for convergence.
    async fn apply(
        &mut self,
        events: Vec<ProxyEvent>,
        objects: &ObjectStore,
        expected: &ProgrammedState,
        bound: Duration,
    ) -> Result<Converged>;

    /// The backend's `inspect()`, when it can be asked.
    async fn inspect(&self) -> Result<Option<ProgrammedState>>;

    /// Stops the backend without cleanup and starts a fresh instance on the
    /// same kernel state and objects (a proxy restart).
    async fn restart(
        &mut self,
        objects: &ObjectStore,
        expected: &ProgrammedState,
        bound: Duration,
    ) -> Result<Converged>;

    /// Stops the backend and removes everything it installed.
    async fn stop(&mut self) -> Result<()>;
}

/// Builds a fresh driver per scenario.
pub trait DriverFactory: Send + Sync {
    /// The label in reports.
    fn label(&self) -> String;
    /// A driver for one scenario, programming through `ctx`.
    fn driver(&self, ctx: BackendContext) -> Box<dyn Driver>;
    /// Checks the node can run this backend at all (`Err(reason)`: every
    /// scenario is unsupported for it).
    fn probe<'a>(&'a self, ctx: &'a BackendContext) -> futures::future::BoxFuture<'a, std::result::Result<(), String>>;
}

/// In-process: a [`BackendFactory`] driven through proxy-core's [`Proxier`].
pub struct InProcess {
    pub factory: Arc<dyn BackendFactory>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess").field("mode", &self.factory.mode()).finish()
    }
}

impl DriverFactory for InProcess {
    fn label(&self) -> String {
        self.factory.mode().to_string()
    }

    fn driver(&self, ctx: BackendContext) -> Box<dyn Driver> {
        Box::new(InProcessDriver::new(self.factory.clone(), ctx))
    }

    fn probe<'a>(&'a self, ctx: &'a BackendContext) -> futures::future::BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(async move { self.factory.probe(ctx).await.map_err(|e| proxy_core::ErrorChain(&e).to_string()) })
    }
}

struct Running {
    proxier: Arc<Proxier>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// One backend instance driven in-process.
pub struct InProcessDriver {
    factory: Arc<dyn BackendFactory>,
    ctx: BackendContext,
    running: Option<Running>,
    capabilities: Option<Capabilities>,
}

impl std::fmt::Debug for InProcessDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessDriver")
            .field("mode", &self.factory.mode())
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

/// The runner timing the suite uses: syncs as soon as asked, retries fast,
/// no periodic resync in the middle of a scenario.
pub fn sync_runner_config() -> SyncRunnerConfig {
    SyncRunnerConfig {
        min_sync_period: Duration::from_millis(10),
        sync_period: Duration::from_secs(300),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
    }
}

impl InProcessDriver {
    pub fn new(factory: Arc<dyn BackendFactory>, ctx: BackendContext) -> Self {
        InProcessDriver { factory, ctx, running: None, capabilities: None }
    }

    fn backend_err(&self, operation: &str, source: DataplaneError) -> ConformanceError {
        ConformanceError::Backend { backend: self.factory.mode().to_string(), operation: operation.to_string(), source }
    }

    fn tracker_config(&self) -> TrackerConfig {
        let planner = PlannerConfig {
            node_name: self.ctx.node_name.clone(),
            families: self.ctx.families,
            masquerade: self.ctx.masquerade.clone(),
        };
        TrackerConfig::new(planner)
    }

    async fn launch(&mut self, objects: &ObjectStore, bound: Duration) -> Result<Converged> {
        let start = Instant::now();
        let dp = self.factory.build(&self.ctx).await.map_err(|e| self.backend_err("build", e))?;
        self.capabilities = Some(dp.capabilities());
        let trigger = SyncTrigger::default();
        let proxier = Arc::new(Proxier::new(
            ChangeTracker::new(self.tracker_config()),
            dp,
            ProxyHealth::new(Duration::from_secs(120)),
            None,
            trigger.clone(),
        ));
        for ev in objects.initial_events() {
            proxier.handle(ev);
        }
        let (tx, rx) = oneshot::channel();
        let runner = SyncRunner::with_trigger(sync_runner_config(), trigger);
        let task = tokio::spawn(proxier.clone().run(runner, async move {
            let _ = rx.await;
        }));
        self.running = Some(Running { proxier, shutdown: tx, task });
        self.wait_converged(start, bound).await
    }

    async fn wait_converged(&self, start: Instant, bound: Duration) -> Result<Converged> {
        let Some(r) = &self.running else {
            return Err(ConformanceError::Driver { driver: self.label(), message: "not started".into() });
        };
        let target = r.proxier.desired().generation;
        let mut rx = r.proxier.subscribe();
        let waited = tokio::time::timeout(bound, rx.wait_for(|s| s.syncs > 0 && s.generation >= target)).await;
        match waited {
            Ok(Ok(_)) => Ok(Converged { elapsed: start.elapsed() }),
            Ok(Err(_)) => Err(ConformanceError::Driver { driver: self.label(), message: "the proxier stopped".into() }),
            Err(_) => Err(ConformanceError::Driver {
                driver: self.label(),
                message: format!(
                    "did not converge within {} ms: the kernel reflects generation {}, desired {target} (see the sync errors in the log)",
                    bound.as_millis(),
                    r.proxier.synced_generation()
                ),
            }),
        }
    }

    async fn halt(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown.send(());
            if let Err(e) = r.task.await {
                warn!(error = %e, "proxier task ended badly");
            }
        }
    }
}

#[async_trait]
impl Driver for InProcessDriver {
    fn label(&self) -> String {
        self.factory.mode().to_string()
    }

    fn capabilities(&self) -> Option<Capabilities> {
        self.capabilities.clone()
    }

    async fn start(
        &mut self,
        objects: &ObjectStore,
        _expected: &ProgrammedState,
        bound: Duration,
    ) -> Result<Converged> {
        self.launch(objects, bound).await
    }

    async fn apply(
        &mut self,
        events: Vec<ProxyEvent>,
        _objects: &ObjectStore,
        _expected: &ProgrammedState,
        bound: Duration,
    ) -> Result<Converged> {
        let start = Instant::now();
        let Some(r) = &self.running else {
            return Err(ConformanceError::Driver { driver: self.label(), message: "not started".into() });
        };
        for ev in events {
            r.proxier.handle(ev);
        }
        self.wait_converged(start, bound).await
    }

    async fn inspect(&self) -> Result<Option<ProgrammedState>> {
        let Some(r) = &self.running else { return Ok(None) };
        r.proxier.dataplane().inspect().await.map(Some).map_err(|e| self.backend_err("inspect", e))
    }

    async fn restart(
        &mut self,
        objects: &ObjectStore,
        _expected: &ProgrammedState,
        bound: Duration,
    ) -> Result<Converged> {
        self.halt().await;
        self.launch(objects, bound).await
    }

    /// Stops, cleans up, and checks the cleanup: `inspect()` must then find nothing.
    async fn stop(&mut self) -> Result<()> {
        let dp = self.running.as_ref().map(|r| r.proxier.dataplane().clone());
        self.halt().await;
        let Some(dp) = dp else {
            return self.factory.cleanup(&self.ctx).await.map_err(|e| self.backend_err("cleanup", e));
        };
        dp.cleanup().await.map_err(|e| self.backend_err("cleanup", e))?;
        let left = dp.inspect().await.map_err(|e| self.backend_err("inspect after cleanup", e))?;
        if left.frontends.is_empty() {
            Ok(())
        } else {
            let frontends: Vec<String> = left.frontends.keys().map(ToString::to_string).collect();
            Err(ConformanceError::Driver {
                driver: self.label(),
                message: format!("cleanup() left frontends in the kernel: {}", frontends.join(", ")),
            })
        }
    }
}

/// Where a black-box proxy reads the scenario's objects from.
#[derive(Clone, Debug, Default)]
pub enum ObjectSource {
    /// A manifest file, rewritten atomically on every update (`--source file:PATH`).
    #[default]
    File,
    /// The lab's real API server: objects written through the API, the proxy
    /// started with `--kubeconfig` (see [`crate::apisource`]).
    ApiServer(Arc<ApiLab>),
}

impl ObjectSource {
    /// `file` or `apiserver`.
    pub fn name(&self) -> &'static str {
        match self {
            ObjectSource::File => "file",
            ObjectSource::ApiServer(_) => "apiserver",
        }
    }
}

/// How to run the `switchyard` binary as a black box.
#[derive(Clone, Debug)]
pub struct ExternalBinary {
    /// The `switchyard` binary.
    pub binary: PathBuf,
    /// The `--proxy-mode`.
    pub mode: String,
    /// Extra arguments, after the generated ones.
    pub extra_args: Vec<String>,
    /// Where the objects come from.
    pub source: ObjectSource,
}

/// `nodePortAddresses` as kube-proxy is told it in `mode` (absent: its
/// default, every address). kube-proxy's nftables mode, and so switchyard's,
/// defaults to the node's primary addresses: there, every address is said
/// explicitly, as an operator would. Shared by switchyard's flags and the
/// upstream kube-proxy columns' configuration.
pub fn node_port_addresses(mode: &str, npa: &proxy_core::NodePortAddresses) -> Option<Vec<String>> {
    match npa {
        proxy_core::NodePortAddresses::All if mode == "nftables" => Some(vec!["0.0.0.0/0".into(), "::/0".into()]),
        proxy_core::NodePortAddresses::All => None,
        proxy_core::NodePortAddresses::Primary => Some(vec!["primary".into()]),
        proxy_core::NodePortAddresses::Cidrs(c) => Some(c.iter().map(ToString::to_string).collect()),
    }
}

impl ExternalBinary {
    /// A black box reading a manifest file.
    pub fn new(binary: PathBuf, mode: impl Into<String>, extra_args: Vec<String>) -> Self {
        ExternalBinary { binary, mode: mode.into(), extra_args, source: ObjectSource::File }
    }

    /// The command line for a context and a source, in kube-proxy's flag
    /// names (`--proxy-mode`, `--hostname-override`, `--cluster-cidr`,
    /// `--masquerade-all`, `--nodeport-addresses`) plus the source: `--source
    /// file:PATH` for a manifest, `--kubeconfig PATH` for the API server.
    pub fn args(&self, ctx: &BackendContext, source: &SourceArg) -> Vec<String> {
        let mut args = source.args();
        args.extend(self.context_args(ctx));
        // Follow updates quickly (kube-proxy's default is 1s).
        args.extend(["--min-sync-period".to_string(), "50ms".to_string()]);
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// The flags that describe the backend context (shared by the daemon and `inspect`).
    pub fn context_args(&self, ctx: &BackendContext) -> Vec<String> {
        let mut args = vec![
            "--proxy-mode".to_string(),
            self.mode.clone(),
            "--hostname-override".to_string(),
            ctx.node_name.to_string(),
        ];
        if !ctx.masquerade.cluster_cidrs.is_empty() {
            let cidrs: Vec<String> = ctx.masquerade.cluster_cidrs.iter().map(ToString::to_string).collect();
            args.push("--cluster-cidr".into());
            args.push(cidrs.join(","));
        }
        if ctx.masquerade.all {
            args.push("--masquerade-all".into());
        }
        if let Some(list) = node_port_addresses(&self.mode, &ctx.nodeport_addresses) {
            args.push("--nodeport-addresses".into());
            args.push(list.join(","));
        }
        args
    }
}

impl DriverFactory for ExternalBinary {
    /// `MODE@BINARY`, and `+apiserver` when the objects come through the API server.
    fn label(&self) -> String {
        let suffix = match self.source {
            ObjectSource::File => "",
            ObjectSource::ApiServer(_) => "+apiserver",
        };
        format!(
            "{}@{}{suffix}",
            self.mode,
            self.binary.file_name().map_or_else(|| "switchyard".into(), |n| n.to_string_lossy().to_string())
        )
    }

    fn driver(&self, ctx: BackendContext) -> Box<dyn Driver> {
        Box::new(ExternalDriver { spec: self.clone(), ctx, child: None, dir: None })
    }

    fn probe<'a>(
        &'a self,
        _ctx: &'a BackendContext,
    ) -> futures::future::BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(async move {
            if self.binary.is_file() || which(&self.binary).is_some() {
                Ok(())
            } else {
                Err(format!("no switchyard binary at {}", self.binary.display()))
            }
        })
    }
}

/// The source flags of one run: a manifest path or a kubeconfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceArg {
    File(PathBuf),
    Kubeconfig(PathBuf),
}

impl SourceArg {
    pub fn args(&self) -> Vec<String> {
        match self {
            SourceArg::File(p) => vec!["--source".into(), format!("file:{}", p.display())],
            SourceArg::Kubeconfig(p) => vec!["--kubeconfig".into(), p.display().to_string()],
        }
    }
}

/// Reads `switchyard inspect -o json`: an object whose `programmed` field is a `ProgrammedState`.
pub fn parse_inspect(stdout: &[u8]) -> std::result::Result<ProgrammedState, String> {
    let v: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("inspect output is not JSON: {e}"))?;
    let programmed = v.get("programmed").cloned().ok_or("inspect output has no `programmed`")?;
    serde_json::from_value(programmed).map_err(|e| format!("inspect output: {e}"))
}

fn which(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return None;
    }
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
}

/// One `switchyard` process in node1's namespace.
#[derive(Debug)]
pub struct ExternalDriver {
    spec: ExternalBinary,
    ctx: BackendContext,
    child: Option<tokio::process::Child>,
    dir: Option<PathBuf>,
}

impl ExternalDriver {
    fn err(&self, message: impl Into<String>) -> ConformanceError {
        ConformanceError::Driver { driver: self.spec.label(), message: message.into() }
    }

    fn manifest(&mut self) -> Result<PathBuf> {
        if self.dir.is_none() {
            let dir = std::env::temp_dir().join(format!(
                "swy-conformance-{}-{}",
                std::process::id(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
            ));
            std::fs::create_dir_all(&dir).map_err(|e| self.err(format!("creating {}: {e}", dir.display())))?;
            self.dir = Some(dir);
            if let Some(path) = self.config_path() {
                let body = serde_json::json!({ self.spec.mode.clone(): self.ctx.section.clone() });
                std::fs::write(&path, body.to_string())
                    .map_err(|e| self.err(format!("writing {}: {e}", path.display())))?;
            }
        }
        Ok(self.dir.as_ref().map(|d| d.join("objects.yaml")).unwrap_or_default())
    }

    /// Writes the objects atomically (write, then rename) so the file source never reads half a file.
    pub fn write_manifest(&mut self, objects: &ObjectStore) -> Result<PathBuf> {
        let path = self.manifest()?;
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, objects.to_yaml()).map_err(|e| self.err(format!("writing {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(|e| self.err(format!("renaming {}: {e}", tmp.display())))?;
        Ok(path)
    }

    /// Where the backend's configuration section (the eBPF mode's lab
    /// cgroup, say) is written, in switchyard's own format `{MODE: section}`,
    /// when the run directory is made; `None` when the section is empty.
    fn config_path(&self) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        (!self.ctx.section.is_null()).then(|| dir.join("config.json"))
    }

    /// `--config PATH` for the daemon, `inspect` and `--cleanup`, or nothing.
    fn config_args(&self) -> Vec<String> {
        self.config_path().map(|p| vec!["--config".to_string(), p.display().to_string()]).unwrap_or_default()
    }

    /// Puts the objects where the proxy reads them: the manifest file, or the API server.
    async fn publish(&mut self, objects: &ObjectStore) -> Result<SourceArg> {
        match &self.spec.source {
            ObjectSource::File => self.write_manifest(objects).map(SourceArg::File),
            ObjectSource::ApiServer(api) => {
                let api = api.clone();
                self.manifest()?; // the run directory (the section's config file)
                api.objects().replace_all(objects).await?;
                Ok(SourceArg::Kubeconfig(api.switchyard_kubeconfig().await?))
            }
        }
    }

    /// The source flags for `inspect` (without writing anything).
    fn source_arg(&self) -> Result<SourceArg> {
        match &self.spec.source {
            ObjectSource::File => {
                let dir = self.dir.as_ref().ok_or_else(|| self.err("not started"))?;
                Ok(SourceArg::File(dir.join("objects.yaml")))
            }
            ObjectSource::ApiServer(api) => Ok(SourceArg::Kubeconfig(api.switchyard_kubeconfig_path().to_path_buf())),
        }
    }

    async fn spawn(&mut self, objects: &ObjectStore) -> Result<Converged> {
        let start = Instant::now();
        let source = self.publish(objects).await?;
        let mut args = self.spec.args(&self.ctx, &source);
        args.extend(self.config_args());
        debug!(binary = %self.spec.binary.display(), ?args, "starting switchyard");
        let child = self
            .ctx
            .netns
            .tokio_command(&self.spec.binary)
            .map_err(|e| self.err(format!("entering node1: {e}")))?
            .args(&args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.err(format!("starting {}: {e}", self.spec.binary.display())))?;
        self.child = Some(child);
        Ok(Converged { elapsed: start.elapsed() })
    }

    /// Best-effort convergence for a black box: waits until `switchyard
    /// inspect` reports the expected state, or `bound` passes. Never fails
    /// on a mismatch: the probes judge behaviour, and the report lists
    /// inspect differences.
    async fn settle(&self, start: Instant, expected: &ProgrammedState, bound: Duration) -> Result<Converged> {
        let waited = crate::patience::poll(bound, || async {
            match self.inspect().await {
                Ok(Some(found)) if expected.diff(&found).is_empty() => Ok(()),
                Ok(_) => Err(()),
                Err(_) => Err(()),
            }
        })
        .await;
        if waited.result.is_err() {
            debug!(driver = %self.spec.label(), "inspect never matched the expected state; probes will judge");
        }
        Ok(Converged { elapsed: start.elapsed() })
    }

    async fn kill(&mut self) {
        terminate(self.child.take(), Duration::from_secs(5)).await;
    }
}

/// Stops a process the suite started: SIGTERM first (a clean stop), then
/// SIGKILL by pid if it lingers past `grace`; reaped either way.
pub(crate) async fn terminate(child: Option<tokio::process::Child>, grace: Duration) {
    let Some(mut c) = child else { return };
    if let Some(pid) = c.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, c.wait()).await.is_err() {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
}

#[async_trait]
impl Driver for ExternalDriver {
    fn label(&self) -> String {
        self.spec.label()
    }

    fn capabilities(&self) -> Option<Capabilities> {
        None
    }

    async fn start(&mut self, objects: &ObjectStore, expected: &ProgrammedState, bound: Duration) -> Result<Converged> {
        let start = Instant::now();
        self.spawn(objects).await?;
        self.settle(start, expected, bound).await
    }

    async fn apply(
        &mut self,
        events: Vec<ProxyEvent>,
        objects: &ObjectStore,
        expected: &ProgrammedState,
        bound: Duration,
    ) -> Result<Converged> {
        let start = Instant::now();
        match &self.spec.source {
            ObjectSource::File => {
                self.write_manifest(objects)?;
            }
            ObjectSource::ApiServer(api) => {
                api.objects().push(&events).await?;
            }
        }
        self.settle(start, expected, bound).await
    }

    /// `switchyard inspect -o json` in node1: the kernel as the binary reads it.
    async fn inspect(&self) -> Result<Option<ProgrammedState>> {
        // With the source (not --no-diff) so the binary learns the Node (families, primary IPs) as the daemon does.
        let mut args = vec!["inspect".to_string(), "-o".into(), "json".into()];
        args.extend(self.source_arg()?.args());
        args.extend(["--source-timeout".into(), "5s".into()]);
        args.extend(self.spec.context_args(&self.ctx));
        args.extend(self.config_args());
        let out = self
            .ctx
            .netns
            .tokio_command(&self.spec.binary)
            .map_err(|e| self.err(format!("entering node1: {e}")))?
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| self.err(format!("running inspect: {e}")))?;
        if !out.status.success() {
            return Err(self.err(format!(
                "inspect exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let state = parse_inspect(&out.stdout).map_err(|e| self.err(e))?;
        Ok(Some(match self.spec.source {
            ObjectSource::File => state,
            ObjectSource::ApiServer(_) => without_api_service(state),
        }))
    }

    async fn restart(
        &mut self,
        objects: &ObjectStore,
        expected: &ProgrammedState,
        bound: Duration,
    ) -> Result<Converged> {
        let start = Instant::now();
        self.kill().await;
        self.spawn(objects).await?;
        self.settle(start, expected, bound).await
    }

    async fn stop(&mut self) -> Result<()> {
        self.kill().await;
        // With the section: the eBPF mode detaches its socket hooks from the lab's cgroup.
        let config = self.config_args();
        let status = self
            .ctx
            .netns
            .tokio_command(&self.spec.binary)
            .map_err(|e| self.err(format!("entering node1: {e}")))?
            .args(["--cleanup", "--proxy-mode", &self.spec.mode])
            .args(&config)
            .stdin(Stdio::null())
            .status()
            .await
            .map_err(|e| self.err(format!("running --cleanup: {e}")))?;
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let ObjectSource::ApiServer(api) = &self.spec.source {
            api.objects().clear().await?;
        }
        if status.success() { Ok(()) } else { Err(self.err(format!("--cleanup exited with {status}"))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_core::{MasqueradeConfig, NetNamespace, NodePortAddresses};

    fn ctx() -> BackendContext {
        let mut ctx = BackendContext::new("node1", NetNamespace::current());
        ctx.masquerade = MasqueradeConfig { all: true, cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")] };
        ctx.nodeport_addresses = NodePortAddresses::Cidrs(vec!["172.18.0.0/24".parse().expect("cidr")]);
        ctx
    }

    #[test]
    fn external_command_line_uses_kube_proxy_flags() {
        let spec = ExternalBinary::new("/usr/bin/switchyard".into(), "iptables", vec!["-v".into()]);
        let args = spec.args(&ctx(), &SourceArg::File("/tmp/x/objects.yaml".into()));
        assert_eq!(
            args,
            [
                "--source",
                "file:/tmp/x/objects.yaml",
                "--proxy-mode",
                "iptables",
                "--hostname-override",
                "node1",
                "--cluster-cidr",
                "10.244.0.0/16",
                "--masquerade-all",
                "--nodeport-addresses",
                "172.18.0.0/24",
                "--min-sync-period",
                "50ms",
                "-v"
            ]
        );
        assert_eq!(spec.label(), "iptables@switchyard");
    }

    /// Every node address serves node ports in the lab; nftables mode
    /// defaults to the primary ones (as kube-proxy), so it is told.
    #[test]
    fn all_node_port_addresses_are_explicit_for_nftables_only() {
        let mut c = ctx();
        c.nodeport_addresses = NodePortAddresses::All;
        let npa = |mode: &str| {
            let args = ExternalBinary::new("/s".into(), mode, vec![]).context_args(&c);
            args.iter().position(|a| a == "--nodeport-addresses").map(|i| args[i + 1].clone())
        };
        assert_eq!(npa("nftables").as_deref(), Some("0.0.0.0/0,::/0"));
        assert_eq!(npa("iptables"), None);
    }

    #[test]
    fn inspect_output_parses() {
        let json = r#"{"mode":"iptables","programmed":{"frontends":[{"frontend":{"kind":"ClusterIP","ip":"10.96.0.10","family":"IPv4","port":80,"protocol":"TCP"},"service":"default/web:http","endpoints":["10.244.1.10:8080"],"cluster_endpoints":null,"empty_verdict":null,"affinity_timeout_seconds":null}]},"differences":null}"#;
        let state = parse_inspect(json.as_bytes()).expect("parses");
        assert_eq!(state.frontends.len(), 1);
        assert!(parse_inspect(b"{}").is_err());
        assert!(parse_inspect(b"not json").is_err());
    }

    #[tokio::test]
    async fn external_driver_runs_the_binary_with_a_manifest_it_rewrites() {
        // A stand-in for switchyard: records its arguments and the manifest it was given.
        let dir = std::env::temp_dir().join(format!("swy-fake-switchyard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let script = dir.join("switchyard");
        let log = dir.join("args.log");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\ncase \"$1\" in --cleanup|inspect) exit 0;; esac\nexec sleep 30\n",
                log.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let spec = ExternalBinary::new(script.clone(), "iptables", vec![]);
        assert_eq!(spec.probe(&ctx()).await, Ok(()));
        let mut driver = spec.driver(ctx());
        let scenario = crate::scenario::Scenario::parse(
            "name: x\ndescription: x\nobjects: []\nsteps: [{wait: 1ms}]\n",
            Path::new("x.yaml"),
        )
        .expect("scenario");
        driver.start(&scenario.objects, &ProgrammedState::default(), Duration::from_millis(200)).await.expect("starts");
        let logged = crate::patience::poll(Duration::from_secs(5), || async {
            std::fs::read_to_string(&log).ok().filter(|s| !s.is_empty()).ok_or(())
        })
        .await;
        let logged = logged.result.expect("the fake switchyard ran");
        assert!(logged.contains("--source file:") && logged.contains("--proxy-mode iptables"), "{logged}");
        let manifest = logged.split("file:").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or_default();
        assert!(std::fs::read_to_string(manifest).unwrap_or_default().contains("kind: Node"));
        // stop() kills it (SIGTERM by pid) and runs `--cleanup`, which the stand-in records too.
        let stop = driver.stop().await;
        assert!(stop.is_ok(), "{stop:?}");
        assert!(std::fs::read_to_string(&log).unwrap_or_default().contains("--cleanup --proxy-mode iptables"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
