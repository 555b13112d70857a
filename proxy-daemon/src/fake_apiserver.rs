//! A small Kubernetes API server for tests, speaking the real list/watch
//! protocol over HTTP so that the real kube client and kube-runtime watcher
//! are exercised (no crate offers one for kube 5).
//!
//! It serves Services (`/api/v1/services`), EndpointSlices
//! (`/apis/discovery.k8s.io/v1/endpointslices`) and Nodes (`/api/v1/nodes`):
//! - lists with `resourceVersion`, `limit`/`continue` paging, label selectors
//!   (`key`, `!key`, `key=value`, `key!=value`) and `metadata.name`/`metadata.namespace`
//!   field selectors;
//! - watches (`watch=true`) as newline-delimited JSON events from a
//!   resourceVersion, with `BOOKMARK`s, `timeoutSeconds`, and the API
//!   server's selector semantics (an object that stops matching is `DELETED`);
//! - `410 Gone` (an `ERROR` event with reason `Expired`) for a watch from a
//!   compacted resourceVersion, which forces the client to relist.
//!
//! Tests drive it: [`apply`](FakeApiServer::apply) / [`delete`](FakeApiServer::delete)
//! objects, [`compact`](FakeApiServer::compact) history, [`drop_watches`](FakeApiServer::drop_watches)
//! (connection drops), [`stop`](FakeApiServer::stop) / [`restart`](FakeApiServer::restart)
//! (API server down), and [`write_kubeconfig`](FakeApiServer::write_kubeconfig).
//! It binds on loopback only.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// The resources served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }

    fn of(value: &Value) -> Option<Kind> {
        match value.get("kind")?.as_str()? {
            "Service" => Some(Kind::Service),
            "EndpointSlice" => Some(Kind::EndpointSlice),
            "Node" => Some(Kind::Node),
            _ => None,
        }
    }
}

type Key = (Kind, String, String);

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: Kind,
    old: Option<Value>,
    /// `None` for a deletion; `old` then holds the object (with the deletion's resourceVersion).
    new: Option<Value>,
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    lists: HashMap<Kind, u64>,
    watches: HashMap<Kind, u64>,
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<Change>,
    /// Incremented to end every open watch (a connection drop).
    drops: watch::Sender<u64>,
    bookmark_interval: Duration,
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake API server. Stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Shared,
    server: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").field("addr", &self.addr).field("running", &self.server.is_some()).finish()
    }
}

impl FakeApiServer {
    /// Starts on a free loopback port.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        Self::start_with_bookmarks(Duration::from_millis(500)).await
    }

    /// Starts, sending a bookmark on every watch this often.
    pub async fn start_with_bookmarks(bookmark_interval: Duration) -> std::io::Result<FakeApiServer> {
        let (changes, _) = broadcast::channel(4096);
        let shared = Shared {
            store: Arc::new(Mutex::new(Store { rv: 1, ..Default::default() })),
            changes,
            drops: watch::Sender::new(0),
            bookmark_interval,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut server = FakeApiServer { addr, shared, server: None };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let router = Router::new()
            .route("/api/v1/services", get(handle_service))
            .route("/apis/discovery.k8s.io/v1/endpointslices", get(handle_slice))
            .route("/api/v1/nodes", get(handle_node))
            .fallback(|| async { (StatusCode::NOT_FOUND, "not served by the fake API server") })
            .with_state(self.shared.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await;
        });
        self.server = Some((stop_tx, task));
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at this server into `dir`.
    pub fn write_kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig_text(&self.url()))?;
        Ok(path)
    }

    /// Creates or updates an object (Service, EndpointSlice or Node), as the
    /// API server would: a new resourceVersion, an ADDED or MODIFIED event.
    /// Returns the resourceVersion.
    pub fn apply<T: serde::Serialize>(&self, object: &T) -> u64 {
        let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
        let Some(kind) = Kind::of(&value) else { return 0 };
        let ns = value.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
        let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let mut store = self.shared.store();
        store.rv += 1;
        let rv = store.rv;
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
            meta.entry("uid").or_insert_with(|| Value::String(format!("uid-{ns}-{name}")));
        }
        let old = store.objects.insert((kind, ns, name), value.clone());
        let change = Change { rv, kind, old, new: Some(value) };
        store.history.push(change.clone());
        let _ = self.shared.changes.send(change);
        rv
    }

    /// Deletes an object; `namespace` is `None` for Nodes. Returns whether it existed.
    pub fn delete(&self, kind: Kind, namespace: Option<&str>, name: &str) -> bool {
        let mut store = self.shared.store();
        let key = (kind, namespace.unwrap_or_default().to_string(), name.to_string());
        let Some(mut old) = store.objects.remove(&key) else { return false };
        store.rv += 1;
        let rv = store.rv;
        if let Some(meta) = old.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let change = Change { rv, kind, old: Some(old), new: None };
        store.history.push(change.clone());
        let _ = self.shared.changes.send(change);
        true
    }

    /// Forgets the watch history: a watch from any earlier resourceVersion
    /// gets 410 Gone (etcd compaction).
    pub fn compact(&self) {
        let mut store = self.shared.store();
        store.compacted = store.rv + 1;
        store.history.clear();
    }

    /// Ends every open watch stream, as a dropped connection or an API
    /// server restart does. Clients re-watch from their last resourceVersion.
    pub fn drop_watches(&self) {
        self.shared.drops.send_modify(|n| *n += 1);
    }

    /// Stops serving: open watches end, new connections are refused.
    pub async fn stop(&mut self) {
        self.drop_watches();
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Serves again on the same address, with the same objects.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv
    }

    /// How many list requests were served for a kind.
    pub fn lists(&self, kind: Kind) -> u64 {
        self.shared.store().lists.get(&kind).copied().unwrap_or(0)
    }

    /// How many watch requests were served for a kind.
    pub fn watches(&self, kind: Kind) -> u64 {
        self.shared.store().watches.get(&kind).copied().unwrap_or(0)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.drops.send_modify(|n| *n += 1);
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            task.abort();
        }
    }
}

/// A kubeconfig for `server` without credentials.
pub fn kubeconfig_text(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         current-context: fake\n"
    )
}

/// One requirement of a label selector.
#[derive(Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
}

fn parse_label_selector(s: &str) -> Result<Vec<Requirement>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let req = if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(k.trim().to_string())
        } else if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(k.trim().to_string(), v.trim().to_string())
        } else if part.contains(' ') {
            return Err(format!("unsupported selector {part:?}"));
        } else {
            Requirement::Exists(part.to_string())
        };
        out.push(req);
    }
    Ok(out)
}

fn parse_field_selector(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) =
            part.split_once("==").or_else(|| part.split_once('=')).ok_or(format!("bad field selector {part:?}"))?;
        if k != "metadata.name" && k != "metadata.namespace" {
            return Err(format!("field label not supported: {k}"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[derive(Debug)]
struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<(String, String)>,
}

impl Selector {
    fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
        });
        let fields_ok = self.fields.iter().all(|(k, v)| {
            let path = if k == "metadata.name" { "/metadata/name" } else { "/metadata/namespace" };
            obj.pointer(path).and_then(Value::as_str).unwrap_or_default() == v
        });
        labels_ok && fields_ok
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn error_response(code: StatusCode, reason: &str, message: &str) -> Response {
    let mut r = (code, status(code.as_u16(), reason, message).to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

async fn handle_service(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    handle(s, Kind::Service, q).await
}

async fn handle_slice(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    handle(s, Kind::EndpointSlice, q).await
}

async fn handle_node(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    handle(s, Kind::Node, q).await
}

async fn handle(shared: Shared, kind: Kind, q: HashMap<String, String>) -> Response {
    let selector = match (
        parse_label_selector(q.get("labelSelector").map_or("", String::as_str)),
        parse_field_selector(q.get("fieldSelector").map_or("", String::as_str)),
    ) {
        (Ok(labels), Ok(fields)) => Selector { labels, fields },
        (Err(e), _) | (_, Err(e)) => return error_response(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    if watching { watch_response(shared, kind, selector, &q) } else { list_response(&shared, kind, &selector, &q) }
}

fn list_response(shared: &Shared, kind: Kind, selector: &Selector, q: &HashMap<String, String>) -> Response {
    let mut store = shared.store();
    *store.lists.entry(kind).or_default() += 1;
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let offset =
        q.get("continue").and_then(|c| c.split_once(':')).and_then(|(_, o)| o.parse::<usize>().ok()).unwrap_or(0);
    let all: Vec<&Value> =
        store.objects.iter().filter(|((k, _, _), v)| *k == kind && selector.matches(v)).map(|(_, v)| v).collect();
    let end = limit.map_or(all.len(), |l| (offset + l).min(all.len()));
    let items: Vec<Value> = all.get(offset..end).unwrap_or_default().iter().map(|v| (*v).clone()).collect();
    let mut metadata = json!({"resourceVersion": store.rv.to_string()});
    if end < all.len() {
        metadata["continue"] = Value::String(format!("{}:{end}", store.rv));
    }
    let body = json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.name()),
        "metadata": metadata,
        "items": items,
    });
    let mut r = (StatusCode::OK, body.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": type_, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Maps a change through a watch's selector, as the API server does.
fn visible(change: &Change, selector: &Selector) -> Option<(&'static str, Value)> {
    let old_matches = change.old.as_ref().is_some_and(|o| selector.matches(o));
    match &change.new {
        None => old_matches.then(|| ("DELETED", change.old.clone().unwrap_or(Value::Null))),
        Some(new) => match (old_matches, selector.matches(new)) {
            (false, true) => Some(("ADDED", new.clone())),
            (true, true) => Some(("MODIFIED", new.clone())),
            (true, false) => Some(("DELETED", new.clone())),
            (false, false) => None,
        },
    }
}

fn watch_response(shared: Shared, kind: Kind, selector: Selector, q: &HashMap<String, String>) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let from = q.get("resourceVersion").and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
    let bookmarks = matches!(q.get("allowWatchBookmarks").map(String::as_str), Some("true" | "1"));
    let timeout = q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let (backlog, mut live, mut last_rv) = {
        let mut store = shared.store();
        *store.watches.entry(kind).or_default() += 1;
        if from != 0 && from < store.compacted {
            let msg = format!("too old resource version: {from} ({})", store.compacted);
            let line = event_line("ERROR", &status(410, "Expired", &msg));
            let body = Body::from(line);
            return (StatusCode::OK, body).into_response();
        }
        let mut backlog = Vec::new();
        if from == 0 {
            // "Start at the most recent": synthetic ADDED for what exists.
            for ((k, _, _), v) in &store.objects {
                if *k == kind && selector.matches(v) {
                    backlog.push(event_line("ADDED", v));
                }
            }
        } else {
            for c in store.history.iter().filter(|c| c.kind == kind && c.rv > from) {
                if let Some((t, obj)) = visible(c, &selector) {
                    backlog.push(event_line(t, &obj));
                }
            }
        }
        (backlog, shared.changes.subscribe(), store.rv)
    };
    let mut drops = shared.drops.subscribe();
    drops.borrow_and_update();
    let interval = shared.bookmark_interval;
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            let line = tokio::select! {
                _ = drops.changed() => return,
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => return,
                _ = tick.tick(), if bookmarks => {
                    let obj = json!({"kind": kind.name(), "apiVersion": kind.api_version(),
                                     "metadata": {"resourceVersion": last_rv.to_string()}});
                    event_line("BOOKMARK", &obj)
                }
                c = live.recv() => match c {
                    Ok(c) if c.kind == kind && c.rv > from => {
                        last_rv = c.rv;
                        match visible(&c, &selector) {
                            Some((t, obj)) => event_line(t, &obj),
                            None => continue,
                        }
                    }
                    Ok(c) => { last_rv = last_rv.max(c.rv); continue }
                    // Lagged or closed: end the watch; the client re-watches.
                    Err(_) => return,
                }
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) });
    let mut r = (StatusCode::OK, Body::from_stream(stream)).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        let sel = Selector {
            labels: parse_label_selector("!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless")
                .unwrap(),
            fields: vec![],
        };
        assert!(sel.matches(&json!({"metadata": {"labels": {"app": "x"}}})));
        assert!(sel.matches(&json!({"metadata": {}})));
        assert!(!sel.matches(&json!({"metadata": {"labels": {"service.kubernetes.io/headless": ""}}})));
        let eq = Selector { labels: parse_label_selector("a=b,c!=d").unwrap(), fields: vec![] };
        assert!(eq.matches(&json!({"metadata": {"labels": {"a": "b"}}})));
        assert!(!eq.matches(&json!({"metadata": {"labels": {"a": "b", "c": "d"}}})));
    }

    #[test]
    fn field_selectors() {
        let sel = Selector { labels: vec![], fields: parse_field_selector("metadata.name=node-a").unwrap() };
        assert!(sel.matches(&json!({"metadata": {"name": "node-a"}})));
        assert!(!sel.matches(&json!({"metadata": {"name": "node-b"}})));
        assert!(parse_field_selector("spec.unschedulable=true").is_err());
    }

    #[test]
    fn selector_transitions() {
        let sel = Selector { labels: parse_label_selector("!skip").unwrap(), fields: vec![] };
        let plain = json!({"metadata": {"name": "a"}});
        let skipped = json!({"metadata": {"name": "a", "labels": {"skip": "1"}}});
        let ch = |old: Option<&Value>, new: Option<&Value>| Change {
            rv: 2,
            kind: Kind::Service,
            old: old.cloned(),
            new: new.cloned(),
        };
        assert_eq!(visible(&ch(None, Some(&plain)), &sel).unwrap().0, "ADDED");
        assert_eq!(visible(&ch(Some(&plain), Some(&plain)), &sel).unwrap().0, "MODIFIED");
        assert_eq!(visible(&ch(Some(&plain), Some(&skipped)), &sel).unwrap().0, "DELETED");
        assert_eq!(visible(&ch(Some(&skipped), Some(&plain)), &sel).unwrap().0, "ADDED");
        assert!(visible(&ch(Some(&skipped), Some(&skipped)), &sel).is_none());
        assert_eq!(visible(&ch(Some(&plain), None), &sel).unwrap().0, "DELETED");
    }
}
