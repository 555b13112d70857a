//! client-go's `rest_client_requests_total{code,host,method}` and
//! `rest_client_request_duration_seconds{host,verb}`, which kube-proxy
//! exports for its API client, for switchyard's kube-rs client: a tower
//! layer around the client's HTTP service (kube-rs offers no metrics of its
//! own). The duration runs until the response headers arrive, as
//! client-go's does, so a watch counts its set-up, not its lifetime.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The HTTP status code, or `<error>` when no response came (client-go's word).
    pub code: String,
    pub host: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub host: String,
    pub verb: String,
}

/// client-go's buckets for the request latency.
pub const DURATION_BUCKETS: [f64; 12] = [0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The handles; clones share them.
#[derive(Clone, Debug)]
pub struct RestClientMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
}

impl Default for RestClientMetrics {
    fn default() -> Self {
        RestClientMetrics { requests: Family::default(), duration: Family::new_with_constructor(duration_histogram) }
    }
}

impl RestClientMetrics {
    /// Registers the handles under client-go's names.
    pub fn register(&self, registry: &mut Registry) {
        // prometheus-client appends `_total` to counters.
        registry.register(
            "rest_client_requests",
            "Number of HTTP requests, partitioned by status code, method, and host.",
            self.requests.clone(),
        );
        registry.register(
            "rest_client_request_duration_seconds",
            "Request latency in seconds. Broken down by verb, and host.",
            self.duration.clone(),
        );
    }
}

/// The tower layer.
#[derive(Clone, Debug)]
pub struct RestMetricsLayer(pub RestClientMetrics);

impl<S> tower::Layer<S> for RestMetricsLayer {
    type Service = RestMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RestMetricsService { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct RestMetricsService<S> {
    inner: S,
    metrics: RestClientMetrics,
}

impl<S, B, R> tower::Service<http::Request<B>> for RestMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.method().as_str().to_string();
        let host = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        // client-go's `verb` label is the request's HTTP method (a watch is a GET).
        let verb = method.clone();
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let code = match &result {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "<error>".to_string(),
            };
            metrics
                .duration
                .get_or_create(&DurationLabels { host: host.clone(), verb })
                .observe(start.elapsed().as_secs_f64());
            metrics.requests.get_or_create(&RequestLabels { code, host, method }).inc();
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn counts_requests_by_code_host_and_method_and_times_them() {
        let metrics = RestClientMetrics::default();
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let status = if req.uri().path().ends_with("missing") { 404 } else { 200 };
            Ok::<_, std::convert::Infallible>(http::Response::builder().status(status).body(()).unwrap())
        });
        let mut svc = RestMetricsLayer(metrics.clone()).layer(inner);
        for uri in [
            "https://10.0.0.1:6443/api/v1/services?watch=true&resourceVersion=1",
            "https://10.0.0.1:6443/api/v1/nodes/missing",
            "https://10.0.0.1:6443/api/v1/nodes/node-a",
        ] {
            let req = http::Request::get(uri).body(()).unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for want in [
            r#"rest_client_requests_total{code="200",host="10.0.0.1:6443",method="GET"} 2"#,
            r#"rest_client_requests_total{code="404",host="10.0.0.1:6443",method="GET"} 1"#,
            r#"rest_client_request_duration_seconds_count{host="10.0.0.1:6443",verb="GET"} 3"#,
            r#"rest_client_request_duration_seconds_bucket{le="60.0",host="10.0.0.1:6443",verb="GET"} 3"#,
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }
}
