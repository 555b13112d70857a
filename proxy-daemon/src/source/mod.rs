//! Sources turn the outside world into [`ProxyEvent`]s: the API server
//! ([`kube`]) or manifests on disk ([`file`]). Both deliver raw watcher-shaped
//! events, relists bracketed by `Init`/`InitDone`.

use std::sync::Arc;

use proxy_core::ProxyEvent;

pub mod file;
pub mod kube;
pub mod rate_limit;
pub mod rest_metrics;

/// Where a source delivers events; called synchronously, in order.
pub type EventSink = Arc<dyn Fn(ProxyEvent) + Send + Sync>;
