//! The kube source: kube-runtime watchers on Services, EndpointSlices
//! (discovery.k8s.io/v1) and this node's Node.
//!
//! The raw watcher events go to proxy-core unchanged: a (re)list is
//! `Init`/`InitApply`.../`InitDone`, which is both the "initial list done"
//! gate and, on a relist after `410 Gone`, how objects that vanished meanwhile
//! are deleted. Errors (API server unreachable, watch expired, forbidden) are
//! logged and retried with exponential backoff; nothing is delivered while
//! the API server is away, so the last programmed state stays in place.
//!
//! Services and EndpointSlices are selected as kube-proxy selects them:
//! `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`
//! (with `serviceProxyName` set, objects labelled for another proxy are left
//! to the tracker to skip, since one label selector cannot say "absent or equal").

use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use proxy_core::health::ProxyHealth;
use proxy_core::{ProxyEvent, ResourceEvent};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::EventSink;

/// kube-proxy's label selector for Services and EndpointSlices.
pub const LABEL_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
/// With a service proxy name of our own, only headless objects are filtered server-side.
pub const LABEL_SELECTOR_NAMED: &str = "!service.kubernetes.io/headless";

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no kubeconfig given and not running in a cluster: {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("--master {url:?} is not a URL: {reason}")]
    Master { url: String, reason: String },
    #[error("cannot build the API client: {0}")]
    Client(#[source] kube::Error),
}

/// Builds the client configuration as kube-proxy does: `--kubeconfig`,
/// with `--master` overriding its server; `--master` alone; or in-cluster
/// / the default kubeconfig.
pub async fn client_config(kubeconfig: Option<&Path>, master: Option<&str>) -> Result<kube::Config, KubeSourceError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| KubeSourceError::Kubeconfig { path: path.display().to_string(), source })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| KubeSourceError::Kubeconfig { path: path.display().to_string(), source })?
        }
        None => match master {
            Some(m) => kube::Config::new(parse_master(m)?),
            None => kube::Config::infer().await.map_err(KubeSourceError::Infer)?,
        },
    };
    if let Some(m) = master {
        config.cluster_url = parse_master(m)?;
    }
    Ok(config)
}

fn parse_master(m: &str) -> Result<http::Uri, KubeSourceError> {
    let uri: http::Uri = m
        .parse()
        .map_err(|e: http::uri::InvalidUri| KubeSourceError::Master { url: m.to_string(), reason: e.to_string() })?;
    if uri.scheme().is_none() || uri.host().is_none() {
        return Err(KubeSourceError::Master { url: m.to_string(), reason: "needs a scheme and host".into() });
    }
    Ok(uri)
}

/// The kube source.
#[derive(Clone)]
pub struct KubeSource {
    client: Client,
    /// client-go's `rest_client_*` for this client (registered by the daemon).
    rest_metrics: super::rest_metrics::RestClientMetrics,
    node_name: String,
    service_proxy_name: Option<String>,
    /// Watch request timeout (the watcher notices a dead connection after this plus 5 s).
    watch_timeout: u32,
    /// Retry delays after errors: from the first to the longest, doubling.
    backoff: (Duration, Duration),
    /// Where failing watches are reported (readiness and health bodies).
    status: Option<ProxyHealth>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource").field("node_name", &self.node_name).finish_non_exhaustive()
    }
}

impl KubeSource {
    /// The client's request metrics, to register where `/metrics` reads.
    pub fn rest_metrics(&self) -> &super::rest_metrics::RestClientMetrics {
        &self.rest_metrics
    }

    pub fn new(
        config: kube::Config,
        node_name: &str,
        service_proxy_name: Option<String>,
        limit: &crate::config::ClientSettings,
    ) -> Result<Self, KubeSourceError> {
        let rest_metrics = super::rest_metrics::RestClientMetrics::default();
        // The limit outside the metrics: a request's duration, as client-go's
        // rest_client_request_duration_seconds, leaves out the wait for a token.
        let client = kube::client::ClientBuilder::try_from(config)
            .map_err(KubeSourceError::Client)?
            .with_layer(&super::rest_metrics::RestMetricsLayer(rest_metrics.clone()))
            .with_layer(&super::rate_limit::RateLimitLayer::new(limit.qps, limit.burst))
            .build();
        Ok(KubeSource {
            client,
            rest_metrics,
            node_name: node_name.to_string(),
            service_proxy_name,
            watch_timeout: 290,
            backoff: (Duration::from_millis(800), Duration::from_secs(30)),
            status: None,
        })
    }

    /// Reports failing watches to `health` (shown by `/readyz` and `/healthz`
    /// as `api server <Kind>: <error>`), cleared when the watch recovers.
    pub fn with_status(mut self, health: ProxyHealth) -> Self {
        self.status = Some(health);
        self
    }

    /// Shorter watch requests (tests of dead-connection handling).
    pub fn with_watch_timeout(mut self, seconds: u32) -> Self {
        self.watch_timeout = seconds;
        self
    }

    /// Retry delays after errors (client-go's are 0.8 s to 30 s, the default).
    pub fn with_backoff(mut self, first: Duration, longest: Duration) -> Self {
        self.backoff = (first, longest);
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn selector(&self) -> &'static str {
        if self.service_proxy_name.is_some() { LABEL_SELECTOR_NAMED } else { LABEL_SELECTOR }
    }

    /// This node's Node, once, if the API server answers within `timeout`
    /// (node IPs for the backend at start-up).
    pub async fn get_node(&self, timeout: Duration) -> Option<Node> {
        let api: Api<Node> = Api::all(self.client.clone());
        match tokio::time::timeout(timeout, api.get_opt(&self.node_name)).await {
            Ok(Ok(node)) => node,
            Ok(Err(e)) => {
                warn!(node = %self.node_name, error = %e, "cannot read this node's Node");
                None
            }
            Err(_) => {
                warn!(node = %self.node_name, "the API server did not answer in time; starting without the Node");
                None
            }
        }
    }

    /// Runs the three watchers until `shutdown`, delivering raw events to `sink`.
    pub async fn run(self, sink: EventSink, shutdown: impl std::future::Future<Output = ()>) {
        let base = watcher::Config::default().timeout(self.watch_timeout);
        let services = watch::<Service>(
            Api::all(self.client.clone()),
            base.clone().labels(self.selector()),
            sink.clone(),
            ProxyEvent::Service,
            self.backoff,
            self.status.clone(),
        );
        let slices = watch::<EndpointSlice>(
            Api::all(self.client.clone()),
            base.clone().labels(self.selector()),
            sink.clone(),
            ProxyEvent::EndpointSlice,
            self.backoff,
            self.status.clone(),
        );
        let node = watch::<Node>(
            Api::all(self.client.clone()),
            base.fields(&format!("metadata.name={}", self.node_name)),
            sink,
            ProxyEvent::Node,
            self.backoff,
            self.status.clone(),
        );
        tokio::select! {
            _ = shutdown => {}
            _ = async { tokio::join!(services, slices, node) } => {}
        }
    }
}

async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    sink: EventSink,
    wrap: fn(ResourceEvent<K>) -> ProxyEvent,
    backoff: (Duration, Duration),
    status: Option<ProxyHealth>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let source = format!("api server {kind}");
    // The retry delay is ours, not kube-runtime's `StreamBackoff`: an expired
    // watch must relist at once (below), which a backoff that sees only "an
    // error" cannot tell apart.
    let mut delays = RetryBackoff::new(backoff.0, backoff.1);
    let mut stream = std::pin::pin!(watcher::watcher(api, config));
    let mut failing = false;
    let mut relists = 0u64;
    let mut expired_in_a_row = 0u32;
    while let Some(item) = stream.next().await {
        match item {
            Ok(ev) => {
                delays.reset();
                expired_in_a_row = 0;
                if failing {
                    info!(resource = %kind, "watch recovered");
                    failing = false;
                    if let Some(h) = &status {
                        h.set_source_problem(&source, None);
                    }
                }
                let ev = match ev {
                    Event::Init => {
                        relists += 1;
                        if relists > 1 {
                            info!(resource = %kind, "relisting");
                        }
                        ResourceEvent::Init
                    }
                    Event::InitApply(o) => ResourceEvent::InitApply(o),
                    Event::InitDone => ResourceEvent::InitDone,
                    Event::Apply(o) => ResourceEvent::Apply(o),
                    Event::Delete(o) => ResourceEvent::Delete(o),
                };
                sink(wrap(ev));
            }
            // 410 Gone: the resourceVersion fell out of the API server's
            // window (etcd compaction, a restarted API server's fresh watch
            // cache). The watcher has already dropped it and relists on the
            // next poll; waiting first (up to 30 s after an outage) would only
            // delay convergence, as client-go's reflector does not. Twice in a
            // row without a successful event is no longer routine: back off.
            Err(e) if is_expired(&e) && expired_in_a_row == 0 => {
                expired_in_a_row += 1;
                info!(resource = %kind, error = %describe_watch_error(&e), "watch expired; relisting now");
            }
            Err(e) => {
                let error = describe_watch_error(&e);
                // Each retry is delayed by the backoff, so this stays readable.
                warn!(
                    resource = %kind,
                    error = %error,
                    "watch failed; retrying with backoff, programmed state stays in place"
                );
                if let Some(h) = &status {
                    h.set_source_problem(&source, Some(error));
                }
                failing = true;
                if let Some(delay) = delays.next() {
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Whether the API server ended the watch because its resourceVersion is
/// too old (an `ERROR` event with code 410, as kube-apiserver sends it). Only
/// this form: it is the one after which kube-runtime's watcher forgets the
/// resourceVersion and relists (other errors keep it and retry the watch).
fn is_expired(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(status) if status.code == 410)
}

/// A watcher error in one line that says what was refused and why, e.g.
/// `initial list failed: endpointslices.discovery.k8s.io is forbidden: User
/// "system:serviceaccount:kube-system:switchyard" cannot list resource
/// "endpointslices" in API group "discovery.k8s.io" at the cluster scope (403
/// Forbidden)`. Not the error chain as it is: kube's errors repeat their
/// source in their own message, and an API error adds the whole `Status` in
/// debug form, so a forbidden list read three times over, twice with a
/// struct dump (seen against a real kube-apiserver, tests/apiserver.rs).
pub fn describe_watch_error(e: &watcher::Error) -> String {
    let (phase, inner) = match e {
        watcher::Error::InitialListFailed(inner) => ("initial list failed", inner),
        watcher::Error::WatchStartFailed(inner) => ("watch could not start", inner),
        watcher::Error::WatchFailed(inner) => ("watch stream failed", inner),
        watcher::Error::WatchError(status) => {
            return format!("the API server ended the watch: {}", status_text(status));
        }
        watcher::Error::NoResourceVersion => return e.to_string(),
    };
    match inner {
        kube::Error::Api(status) => format!("{phase}: {}", status_text(status)),
        other => format!("{phase}: {}", chain_once(other)),
    }
}

fn status_text(s: &kube::core::Status) -> String {
    let mut text = format!("{} ({} {})", s.message, s.code, s.reason);
    if s.code == 403 {
        text.push_str("; grant this identity that verb on that resource (as deploy/base/rbac.yaml does)");
    }
    text
}

/// The error and its sources, each message once: a source whose text the
/// message so far already holds adds nothing.
fn chain_once(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let m = s.to_string();
        if !text.contains(&m) {
            text.push_str(": ");
            text.push_str(&m);
        }
        source = s.source();
    }
    text
}

/// Exponential retry delays, doubling from `first` to `longest`; reset by
/// a successful event.
#[derive(Debug, Clone)]
struct RetryBackoff {
    first: Duration,
    longest: Duration,
    next: Duration,
}

impl RetryBackoff {
    fn new(first: Duration, longest: Duration) -> Self {
        RetryBackoff { first, longest, next: first }
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.longest);
        Some(d)
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn master_overrides_the_kubeconfig_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, crate::fake_apiserver::kubeconfig_text("http://127.0.0.1:1")).unwrap();
        let c = client_config(Some(&path), None).await.unwrap();
        assert_eq!(c.cluster_url.to_string(), "http://127.0.0.1:1/");
        let c = client_config(Some(&path), Some("https://10.0.0.1:6443")).await.unwrap();
        assert_eq!(c.cluster_url.to_string(), "https://10.0.0.1:6443/");
        let c = client_config(None, Some("http://127.0.0.1:2")).await.unwrap();
        assert_eq!(c.cluster_url.to_string(), "http://127.0.0.1:2/");
        assert!(matches!(client_config(None, Some("not a url")).await, Err(KubeSourceError::Master { .. })));
        let missing = client_config(Some(Path::new("/nonexistent/kc")), None).await.unwrap_err();
        assert!(ErrorChainText(&missing).contains("/nonexistent/kc"), "{missing}");
    }

    fn forbidden() -> kube::core::Status {
        let message = r#"endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:kube-system:switchyard" cannot list resource "endpointslices" in API group "discovery.k8s.io" at the cluster scope"#;
        kube::core::Status::failure(message, "Forbidden").with_code(403)
    }

    #[test]
    fn a_refused_list_is_described_once_with_resource_verb_and_code() {
        let e = watcher::Error::InitialListFailed(kube::Error::Api(forbidden().boxed()));
        let text = describe_watch_error(&e);
        assert_eq!(
            text,
            r#"initial list failed: endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:kube-system:switchyard" cannot list resource "endpointslices" in API group "discovery.k8s.io" at the cluster scope (403 Forbidden); grant this identity that verb on that resource (as deploy/base/rbac.yaml does)"#
        );
        let gone = kube::core::Status::failure("too old resource version: 1 (5)", "Expired").with_code(410);
        let e = watcher::Error::WatchError(gone.boxed());
        assert_eq!(
            describe_watch_error(&e),
            "the API server ended the watch: too old resource version: 1 (5) (410 Expired)"
        );
    }

    #[test]
    fn only_an_expired_watch_event_relists_at_once() {
        let gone = kube::core::Status::failure("too old resource version: 1 (5)", "Expired").with_code(410);
        assert!(is_expired(&watcher::Error::WatchError(Box::new(gone.clone()))));
        // kube-runtime keeps the resourceVersion after these: retrying at once would spin.
        assert!(!is_expired(&watcher::Error::WatchStartFailed(kube::Error::Api(Box::new(gone)))));
        let other = kube::core::Status::failure("internal error", "InternalError").with_code(500);
        assert!(!is_expired(&watcher::Error::WatchError(Box::new(other))));
    }

    #[test]
    fn other_errors_print_each_message_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "tcp connect error: Connection refused");
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect): {0}")]
        struct Wrapper(#[source] std::io::Error);
        let e = Wrapper(io);
        assert_eq!(chain_once(&e), "client error (Connect): tcp connect error: Connection refused");
    }

    struct ErrorChainText<'a>(&'a KubeSourceError);

    impl ErrorChainText<'_> {
        fn contains(&self, s: &str) -> bool {
            proxy_core::ErrorChain(self.0).to_string().contains(s)
        }
    }
}
