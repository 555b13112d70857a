//! The `plugin` dataplane: a [`Dataplane`] whose kernel work is done by
//! another process, and the supervisor that keeps that process running.
//!
//! - `build` starts (or connects to) the plugin and shakes hands, so the
//!   capabilities are known before the first sync.
//! - `sync` sends one batch — full when the plugin is new, after an error,
//!   or when the core asks; otherwise only the Services that changed — and
//!   waits for the barrier's answer. Batches are serialized, so while a slow
//!   plugin works the core keeps coalescing changes into the next batch.
//! - The supervisor notices when a connection ends (exit, closed output,
//!   protocol violation, timeout), marks the dataplane down (`/healthz`
//!   fails, `switchyard_plugin_up` is 0), restarts the plugin (or
//!   reconnects to a sidecar) with exponential backoff, and sends it the
//!   full state at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use proxy_core::{
    BackendContext, Capabilities, Capability, Dataplane, DataplaneError, DataplaneHealth, NetNamespace,
    ProgrammedState, ServiceName, Snapshot, SyncOutcome, SyncRequest,
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::MODE;
use crate::client::{self, Closed, Connection, Process};
use crate::config::PluginConfig;
use crate::error::Error;
use crate::protocol::{
    Begin, Context, DaemonMessage, Hello, Node, PROTOCOL_VERSION, PluginHello, PluginMessage, Request, ServiceUpdate,
};

/// A connection that lived this long resets the restart backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a started plugin gets to exit after end of input.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// `switchyard_plugin_*` metrics.
#[derive(Clone, Debug)]
pub struct PluginMetrics {
    /// `switchyard_plugin_up`: 1 while connected.
    pub up: Gauge,
    /// `switchyard_plugin_restarts_total`: restarts or reconnects.
    pub restarts: Counter,
    /// `switchyard_plugin_protocol_errors_total`: connections closed for a violation.
    pub protocol_errors: Counter,
    /// `switchyard_plugin_batch_services`: `service` messages per batch (coalescing shows here).
    pub batch_services: Histogram,
}

impl PluginMetrics {
    pub fn new() -> Self {
        PluginMetrics {
            up: Gauge::default(),
            restarts: Counter::default(),
            protocol_errors: Counter::default(),
            batch_services: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
        }
    }

    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("switchyard");
        r.register("plugin_up", "1 while the dataplane plugin is connected", self.up.clone());
        r.register("plugin_restarts", "Dataplane plugin restarts and reconnects", self.restarts.clone());
        r.register(
            "plugin_protocol_errors",
            "Connections to the dataplane plugin closed for a protocol violation",
            self.protocol_errors.clone(),
        );
        r.register(
            "plugin_batch_services",
            "Service messages per batch sent to the plugin",
            self.batch_services.clone(),
        );
    }
}

/// What the daemon needs to (re)connect.
#[derive(Debug)]
struct Spec {
    config: PluginConfig,
    netns: NetNamespace,
    context: Context,
}

/// A connection that finished its handshake.
struct Established {
    conn: Arc<Connection>,
    process: Option<Process>,
    hello: PluginHello,
    since: Instant,
}

#[derive(Debug, Default)]
struct SyncState {
    /// The epoch of the connection that holds our state (got a full batch and acked).
    synced_epoch: Option<u64>,
    /// The last batch failed: the next one is full.
    dirty: bool,
    /// The most recent desired state, replayed to a restarted plugin.
    last: Option<Arc<Snapshot>>,
    /// Batches sent so far.
    batches: u64,
}

#[derive(Debug)]
struct Inner {
    spec: Spec,
    label: Mutex<String>,
    capabilities: Mutex<Capabilities>,
    /// The live connection; `None` while down.
    current: watch::Sender<Option<Arc<Connection>>>,
    down: Mutex<Option<String>>,
    sync: tokio::sync::Mutex<SyncState>,
    epochs: AtomicU64,
    metrics: PluginMetrics,
}

/// The out-of-process dataplane.
#[derive(Debug)]
pub struct PluginDataplane {
    inner: Arc<Inner>,
    /// Dropping the dataplane stops the supervisor (and the plugin it started).
    stop: watch::Sender<bool>,
}

impl Drop for PluginDataplane {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Inner {
    fn label(&self) -> String {
        self.label.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn new(config: PluginConfig, ctx: &BackendContext, metrics: PluginMetrics) -> Arc<Inner> {
        Arc::new(Inner {
            label: Mutex::new(config.transport.label()),
            spec: Spec { config, netns: ctx.netns.clone(), context: Context::from_backend(ctx) },
            capabilities: Mutex::new(Capabilities::default()),
            current: watch::Sender::new(None),
            down: Mutex::new(None),
            sync: tokio::sync::Mutex::new(SyncState::default()),
            epochs: AtomicU64::new(1),
            metrics,
        })
    }

    fn hello(&self, id: u64) -> Hello {
        Hello {
            id,
            protocol_versions: vec![PROTOCOL_VERSION],
            daemon: format!("switchyard {}", env!("CARGO_PKG_VERSION")),
            mode: MODE.to_string(),
            context: self.spec.context.clone(),
            options: self.spec.config.options.clone(),
        }
    }

    /// Starts or connects, then shakes hands.
    async fn establish(&self) -> Result<Established, Error> {
        let epoch = self.epochs.fetch_add(1, Ordering::SeqCst);
        let cfg = &self.spec.config;
        let (conn, mut process) = client::open(&cfg.transport, &self.spec.netns, epoch, cfg.handshake_timeout).await?;
        match handshake(&conn, self.hello(conn.next_id()), cfg.handshake_timeout).await {
            Ok(hello) => {
                *self.label.lock().unwrap_or_else(|e| e.into_inner()) = hello.plugin.name.clone();
                *self.capabilities.lock().unwrap_or_else(|e| e.into_inner()) = capabilities(&hello);
                Ok(Established { conn, process, hello, since: Instant::now() })
            }
            Err(e) => {
                if matches!(e, Error::Protocol { .. }) {
                    self.metrics.protocol_errors.inc();
                }
                conn.close(Closed::ByDaemon(format!("handshake failed: {}", proxy_core::ErrorChain(&e))));
                if let Some(p) = process.as_mut() {
                    p.stop(&conn, EXIT_GRACE).await;
                }
                Err(e)
            }
        }
    }

    fn mark_up(&self, conn: &Arc<Connection>) {
        *self.down.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.metrics.up.set(1);
        self.current.send_replace(Some(conn.clone()));
    }

    fn mark_down(&self, reason: String) {
        *self.down.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.metrics.up.set(0);
        self.current.send_replace(None);
    }

    /// The live connection, waiting up to `patience` for one.
    async fn connection(&self, patience: Duration) -> Result<Arc<Connection>, Error> {
        let mut rx = self.current.subscribe();
        let waited =
            tokio::time::timeout(patience, rx.wait_for(|c| c.as_ref().is_some_and(|c| c.closed_reason().is_none())));
        match waited.await {
            Ok(Ok(c)) => c.clone().ok_or_else(|| self.down_error()),
            _ => Err(self.down_error()),
        }
    }

    fn down_error(&self) -> Error {
        let reason = self.down.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Error::Down { plugin: self.label(), reason: reason.unwrap_or_else(|| "not connected".into()) }
    }

    /// Sends one batch and waits for its barrier's answer.
    async fn send_batch(
        &self,
        st: &mut SyncState,
        conn: &Connection,
        snapshot: &Snapshot,
        changed: Option<&std::collections::BTreeSet<ServiceName>>,
    ) -> Result<SyncOutcome, Error> {
        let masq = &snapshot.config.masquerade;
        let services: Vec<ServiceUpdate> = match changed {
            None => snapshot.services().map(|p| ServiceUpdate::new(p.name(), Some(p), masq)).collect(),
            Some(names) => {
                names.iter().map(|n| ServiceUpdate::new(n, snapshot.service(n).map(|p| p.as_ref()), masq)).collect()
            }
        };
        st.batches += 1;
        let batch = conn.next_id();
        let begin = DaemonMessage::Begin(Begin {
            batch,
            full: changed.is_none(),
            generation: snapshot.generation,
            services: services.len() as u64,
            node: snapshot.node.as_deref().map(Node::from),
        });
        self.metrics.batch_services.observe(services.len() as f64);
        let messages = std::iter::once(begin)
            .chain(services.into_iter().map(DaemonMessage::Service))
            .chain(std::iter::once(DaemonMessage::Barrier(Request { id: batch })));
        let what = format!("barrier {batch}");
        let answer = conn.request(batch, &what, messages, self.spec.config.request_timeout).await?;
        match answer {
            PluginMessage::Ack(ack) => {
                for w in &ack.warnings {
                    warn!(plugin = %self.label(), service = ?w.service, "skipped: {}", w.message);
                }
                Ok(SyncOutcome { full: changed.is_none(), objects: ack.objects, ..Default::default() })
            }
            PluginMessage::Error(e) => Err(reported(conn, &what, e.error)),
            other => Err(unexpected(conn, &what, &other)),
        }
    }

    /// A simple request (`inspect`, `cleanup`) on the live connection.
    async fn simple(&self, make: fn(Request) -> DaemonMessage, what: &str) -> Result<PluginMessage, Error> {
        let timeout = self.spec.config.request_timeout;
        let conn = self.connection(timeout).await?;
        let id = conn.next_id();
        let result = conn.request(id, what, [make(Request { id })], timeout).await;
        if let Err(e) = &result {
            self.after_error(&conn, e);
        }
        result
    }

    fn after_error(&self, conn: &Connection, e: &Error) {
        if let Error::Protocol { .. } = e {
            self.metrics.protocol_errors.inc();
        }
        if e.breaks_connection() && conn.closed_reason().is_none() {
            conn.close(Closed::ByDaemon(proxy_core::ErrorChain(e).to_string()));
        }
    }

    /// Full state to a new connection, unless a sync got there first.
    async fn replay(&self, conn: &Connection) {
        let mut st = self.sync.lock().await;
        let Some(last) = st.last.clone() else { return };
        if st.synced_epoch == Some(conn.epoch) {
            return;
        }
        match self.send_batch(&mut st, conn, &last, None).await {
            Ok(_) => {
                st.synced_epoch = Some(conn.epoch);
                st.dirty = false;
                info!(plugin = %self.label(), services = last.len(), generation = last.generation, "full state sent to the restarted plugin");
            }
            Err(e) => {
                st.dirty = true;
                self.after_error(conn, &e);
                warn!(plugin = %self.label(), error = %proxy_core::ErrorChain(&e), "replaying the full state failed; the next sync retries");
            }
        }
    }
}

async fn handshake(conn: &Connection, hello: Hello, timeout: Duration) -> Result<PluginHello, Error> {
    let id = hello.id;
    match conn.request(id, "hello", [DaemonMessage::Hello(hello)], timeout).await? {
        PluginMessage::Hello(reply) => {
            conn.set_label(&reply.plugin.name);
            if reply.protocol_version != PROTOCOL_VERSION {
                return Err(Error::Version {
                    plugin: reply.plugin.name,
                    offered: reply.protocol_version,
                    supported: vec![PROTOCOL_VERSION],
                });
            }
            info!(
                plugin = %reply.plugin.name,
                version = %reply.plugin.version,
                protocol = reply.protocol_version,
                capabilities = ?reply.capabilities,
                "plugin connected"
            );
            Ok(reply)
        }
        PluginMessage::Error(e) => Err(reported(conn, "hello", e.error)),
        other => Err(unexpected(conn, "hello", &other)),
    }
}

fn reported(conn: &Connection, request: &str, error: crate::protocol::TypedError) -> Error {
    Error::Reported {
        plugin: conn.label(),
        request: request.to_string(),
        kind: error.kind,
        message: error.message.clone(),
        error,
    }
}

fn unexpected(conn: &Connection, request: &str, answer: &PluginMessage) -> Error {
    let e = Error::Protocol {
        plugin: conn.label(),
        message: format!("the answer to {request} (message {:?})", answer.type_name()),
        reason: format!("{request} is answered by {}", expected_answers(request)),
    };
    conn.close(Closed::Violation { message: format!("answer to {request}"), reason: e.to_string() });
    e
}

fn expected_answers(request: &str) -> &'static str {
    match request.split_whitespace().next() {
        Some("hello") => "hello or error",
        Some("inspect") => "state or error",
        _ => "ack or error",
    }
}

/// The capabilities a plugin declared (unknown names are ignored with a warning).
fn capabilities(hello: &PluginHello) -> Capabilities {
    let mut caps = Vec::new();
    for name in &hello.capabilities {
        match serde_json::from_value::<Capability>(serde_json::Value::String(name.clone())) {
            Ok(c) => caps.push(c),
            Err(_) => warn!(plugin = %hello.plugin.name, capability = %name, "unknown capability ignored"),
        }
    }
    Capabilities::new(caps)
}

impl Default for PluginMetrics {
    fn default() -> Self {
        PluginMetrics::new()
    }
}

/// Resolves once the dataplane asked the supervisor to stop (or was dropped).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Keeps the plugin running until the dataplane is dropped.
async fn supervise(inner: Arc<Inner>, mut current: Established, mut stop: watch::Receiver<bool>) {
    let cfg = inner.spec.config.clone();
    let mut backoff = cfg.restart_backoff;
    loop {
        let why = tokio::select! {
            why = current.conn.closed() => why,
            _ = stopped(&mut stop) => {
                shut(&mut current).await;
                return;
            }
        };
        if let Closed::Violation { .. } = why {
            inner.metrics.protocol_errors.inc();
        }
        let exit = match current.process.as_mut() {
            Some(p) => format!(" ({})", p.stop(&current.conn, EXIT_GRACE).await),
            None => String::new(),
        };
        let reason = format!("{why}{exit}");
        error!(plugin = %current.hello.plugin.name, reason = %reason, "plugin connection lost; the dataplane is down");
        inner.mark_down(reason);
        if current.since.elapsed() >= STABLE_AFTER {
            backoff = cfg.restart_backoff;
        }
        // Restart (or reconnect) with exponential backoff until it works or we stop.
        loop {
            info!(plugin = %inner.label(), delay_ms = backoff.as_millis() as u64, "restarting the plugin");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut stop) => return,
            }
            backoff = (backoff * 2).min(cfg.restart_backoff_max);
            inner.metrics.restarts.inc();
            let attempt = tokio::select! {
                r = inner.establish() => r,
                _ = stopped(&mut stop) => return,
            };
            match attempt {
                Ok(est) => {
                    inner.mark_up(&est.conn);
                    inner.replay(&est.conn).await;
                    current = est;
                    break;
                }
                Err(e) => {
                    let reason = format!("restart failed: {}", proxy_core::ErrorChain(&e));
                    warn!(plugin = %inner.label(), "{reason}");
                    inner.mark_down(reason);
                }
            }
        }
    }
}

/// Stops a connection for good: a started plugin gets end of input, then SIGKILL.
async fn shut(est: &mut Established) {
    est.conn.close(Closed::ByDaemon("the daemon is stopping the plugin".into()));
    match est.process.as_mut() {
        Some(p) => {
            let status = p.stop(&est.conn, EXIT_GRACE).await;
            debug!(plugin = %est.hello.plugin.name, %status, "plugin stopped");
        }
        None => est.conn.close_input().await,
    }
}

impl PluginDataplane {
    /// Starts (or connects to) the plugin, shakes hands and starts supervising it.
    pub async fn start(config: PluginConfig, ctx: &BackendContext, metrics: PluginMetrics) -> Result<Self, Error> {
        let inner = Inner::new(config, ctx, metrics);
        let est = inner.establish().await?;
        inner.mark_up(&est.conn);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(supervise(inner.clone(), est, stop_rx));
        Ok(PluginDataplane { inner, stop })
    }

    /// The plugin's name, from its hello.
    pub fn plugin_name(&self) -> String {
        self.inner.label()
    }
}

#[async_trait]
impl Dataplane for PluginDataplane {
    fn mode(&self) -> &str {
        MODE
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn sync(&self, request: SyncRequest) -> Result<SyncOutcome, DataplaneError> {
        let inner = &self.inner;
        let mut st = inner.sync.lock().await;
        st.last = Some(request.snapshot.clone());
        let conn = match inner.connection(inner.spec.config.request_timeout).await {
            Ok(c) => c,
            Err(e) => {
                st.dirty = true;
                return Err(e.into_dataplane("sync"));
            }
        };
        let full = request.full || st.dirty || st.synced_epoch != Some(conn.epoch);
        let changed = (!full).then_some(request.changed.as_ref());
        match inner.send_batch(&mut st, &conn, &request.snapshot, changed).await {
            Ok(outcome) => {
                st.dirty = false;
                st.synced_epoch = Some(conn.epoch);
                Ok(outcome)
            }
            Err(e) => {
                st.dirty = true;
                inner.after_error(&conn, &e);
                Err(e.into_dataplane("sync"))
            }
        }
    }

    async fn inspect(&self) -> Result<ProgrammedState, DataplaneError> {
        match self.inner.simple(DaemonMessage::Inspect, "inspect").await {
            Ok(PluginMessage::State(s)) => Ok(s.state),
            Ok(PluginMessage::Error(e)) => {
                let conn = self.inner.connection(Duration::ZERO).await.ok();
                Err(Error::Reported {
                    plugin: conn.map_or_else(|| self.inner.label(), |c| c.label()),
                    request: "inspect".into(),
                    kind: e.error.kind,
                    message: e.error.message.clone(),
                    error: e.error,
                }
                .into_dataplane("inspect"))
            }
            Ok(other) => {
                Err(DataplaneError::failed(MODE, "inspect", protocol_mismatch(&self.inner, "inspect", &other)))
            }
            Err(e) => Err(e.into_dataplane("inspect")),
        }
    }

    async fn cleanup(&self) -> Result<(), DataplaneError> {
        let result = self.inner.simple(DaemonMessage::Cleanup, "cleanup").await;
        // Whatever was programmed is gone (or unknown): the next sync is full.
        self.inner.sync.lock().await.dirty = true;
        match result {
            Ok(PluginMessage::Ack(_)) => Ok(()),
            Ok(PluginMessage::Error(e)) => Err(Error::Reported {
                plugin: self.inner.label(),
                request: "cleanup".into(),
                kind: e.error.kind,
                message: e.error.message.clone(),
                error: e.error,
            }
            .into_dataplane("cleanup")),
            Ok(other) => {
                Err(DataplaneError::failed(MODE, "cleanup", protocol_mismatch(&self.inner, "cleanup", &other)))
            }
            Err(e) => Err(e.into_dataplane("cleanup")),
        }
    }

    fn health(&self) -> DataplaneHealth {
        match self.inner.down.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            None => DataplaneHealth::Up,
            Some(reason) => DataplaneHealth::Down { reason: format!("plugin {}: {reason}", self.inner.label()) },
        }
    }
}

fn protocol_mismatch(inner: &Inner, request: &str, answer: &PluginMessage) -> Error {
    let e = Error::Protocol {
        plugin: inner.label(),
        message: format!("the answer to {request} (message {:?})", answer.type_name()),
        reason: format!("{request} is answered by {}", expected_answers(request)),
    };
    if let Some(conn) = inner.current.borrow().clone() {
        inner.metrics.protocol_errors.inc();
        conn.close(Closed::Violation { message: format!("answer to {request}"), reason: e.to_string() });
    }
    e
}

/// `--cleanup` and mode switches: start the plugin just to ask it to clean up, then stop it.
pub async fn cleanup_once(config: PluginConfig, ctx: &BackendContext) -> Result<(), Error> {
    let inner = Inner::new(config, ctx, PluginMetrics::new());
    let mut est = inner.establish().await?;
    let id = est.conn.next_id();
    let timeout = inner.spec.config.request_timeout;
    let answer = est.conn.request(id, "cleanup", [DaemonMessage::Cleanup(Request { id })], timeout).await;
    shut(&mut est).await;
    match answer? {
        PluginMessage::Ack(_) => Ok(()),
        PluginMessage::Error(e) => Err(reported(&est.conn, "cleanup", e.error)),
        other => Err(unexpected(&est.conn, "cleanup", &other)),
    }
}
