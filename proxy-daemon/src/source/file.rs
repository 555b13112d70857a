//! The file source: Kubernetes manifests on disk, watched for changes.
//!
//! `--source file:PATH` names a YAML file or a directory of them (`.yaml`,
//! `.yml`, `.json`; hidden entries skipped, so a mounted ConfigMap's
//! `..data` works). Every file may hold several documents and `List`s.
//! Services, EndpointSlices (discovery.k8s.io/v1) and Nodes are read; other
//! kinds are ignored, so a whole application's manifests can be pointed at.
//!
//! Every load that changed something is delivered as a relist: for each
//! resource `Init`, `InitApply` per object, `InitDone`; the tracker deletes
//! what is no longer listed. The directory is polled (a content hash per
//! poll): it works the same on every file system and with ConfigMap
//! symlink swaps.
//!
//! A malformed file (YAML syntax, a document that is not a valid object) is
//! reported naming the file and the document. Its good documents are still
//! applied, but nothing the file held before is removed until it is fixed:
//! a typo never takes down what is already programmed.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_core::{ProxyEvent, ResourceEvent};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::EventSink;

/// A problem with one file or one document in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based document number, when the problem is in one document.
    pub document: Option<usize>,
    /// `Service default/web`, when the document said what it is.
    pub object: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(d) = self.document {
            write!(f, ", document {d}")?;
        }
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// `(namespace, name)` of an object.
type Key = (String, String);

/// The objects of one file (or of every file).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifests {
    pub services: BTreeMap<Key, Service>,
    pub slices: BTreeMap<Key, EndpointSlice>,
    pub nodes: BTreeMap<String, Node>,
}

impl Manifests {
    fn extend(&mut self, other: &Manifests) {
        self.services.extend(other.services.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.slices.extend(other.slices.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.nodes.extend(other.nodes.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// The relist events for these objects.
    pub fn events(&self) -> Vec<ProxyEvent> {
        let mut out = vec![ProxyEvent::Service(ResourceEvent::Init)];
        out.extend(self.services.values().map(|s| ProxyEvent::Service(ResourceEvent::InitApply(s.clone()))));
        out.push(ProxyEvent::Service(ResourceEvent::InitDone));
        out.push(ProxyEvent::EndpointSlice(ResourceEvent::Init));
        out.extend(self.slices.values().map(|s| ProxyEvent::EndpointSlice(ResourceEvent::InitApply(s.clone()))));
        out.push(ProxyEvent::EndpointSlice(ResourceEvent::InitDone));
        out.push(ProxyEvent::Node(ResourceEvent::Init));
        out.extend(self.nodes.values().map(|n| ProxyEvent::Node(ResourceEvent::InitApply(n.clone()))));
        out.push(ProxyEvent::Node(ResourceEvent::InitDone));
        out
    }
}

fn describe(doc: &Value) -> Option<String> {
    let kind = doc.get("kind")?.as_str()?;
    let meta = doc.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("<unnamed>");
    match meta.and_then(|m| m.get("namespace")).and_then(Value::as_str) {
        Some(ns) => Some(format!("{kind} {ns}/{name}")),
        None => Some(format!("{kind} {name}")),
    }
}

fn typed<T: serde::de::DeserializeOwned>(doc: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) }
    })
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Result<Key, String> {
    let name = meta.name.clone().filter(|n| !n.is_empty()).ok_or("metadata.name: is required")?;
    // Manifests without a namespace land in `default`, as kubectl apply does.
    let ns = meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    Ok((ns, name))
}

/// Adds one document (or a List's items) to `out`.
fn add_document(doc: Value, out: &mut Manifests) -> Result<(), String> {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    let kind = doc.get("kind").and_then(Value::as_str).ok_or("kind: is required")?.to_string();
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => {
            let mut svc: Service = typed(doc)?;
            let key = key_of(&svc.metadata)?;
            svc.metadata.namespace = Some(key.0.clone());
            out.services.insert(key, svc);
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let mut slice: EndpointSlice = typed(doc)?;
            let key = key_of(&slice.metadata)?;
            slice.metadata.namespace = Some(key.0.clone());
            out.slices.insert(key, slice);
        }
        ("v1", "Node") => {
            let node: Node = typed(doc)?;
            let name = node.metadata.name.clone().filter(|n| !n.is_empty()).ok_or("metadata.name: is required")?;
            out.nodes.insert(name, node);
        }
        (_, "EndpointSlice") => {
            return Err(format!("apiVersion {api_version:?}: EndpointSlices are read as discovery.k8s.io/v1"));
        }
        (_, k) if k.ends_with("List") => {
            let items = match doc.get("items") {
                Some(Value::Array(items)) => items.clone(),
                Some(Value::Null) | None => Vec::new(),
                Some(_) => return Err("items: expected a list".into()),
            };
            for (i, item) in items.into_iter().enumerate() {
                add_document(item, out).map_err(|e| format!("items[{i}]: {e}"))?;
            }
        }
        (_, other) => debug!(kind = other, "ignoring a manifest of a kind the proxy does not read"),
    }
    Ok(())
}

/// Parses one file's text. Returns the good objects and the problems.
pub fn parse_file(path: &Path, text: &str) -> (Manifests, Vec<ManifestError>) {
    let mut out = Manifests::default();
    let mut errors = Vec::new();
    let docs: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(docs) => docs,
        Err(e) => {
            errors.push(ManifestError {
                file: path.to_path_buf(),
                document: None,
                object: None,
                message: format!("not valid YAML: {e}"),
            });
            return (out, errors);
        }
    };
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let object = describe(&doc);
        if !doc.is_object() {
            errors.push(ManifestError {
                file: path.to_path_buf(),
                document: Some(i + 1),
                object,
                message: "expected a Kubernetes object (a mapping)".into(),
            });
            continue;
        }
        if let Err(message) = add_document(doc, &mut out) {
            errors.push(ManifestError { file: path.to_path_buf(), document: Some(i + 1), object, message });
        }
    }
    (out, errors)
}

/// The files a path names, sorted.
pub fn list_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let p = entry.path();
        let is_manifest = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"));
        // Follows symlinks (ConfigMap mounts).
        if is_manifest && std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// What one load did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Something on disk changed since the last load (events were delivered).
    pub changed: bool,
    pub files: usize,
    pub services: usize,
    pub slices: usize,
    pub errors: Vec<ManifestError>,
}

#[derive(Debug, Default)]
struct State {
    /// Hash of the paths and contents of the last load.
    fingerprint: Option<u64>,
    /// The last good objects of each file.
    per_file: BTreeMap<PathBuf, Manifests>,
    /// The problems of what is on disk now (repeated by loads that find no change).
    errors: Vec<ManifestError>,
    loads: u64,
}

/// The file source.
pub struct FileSource {
    path: PathBuf,
    poll_interval: Duration,
    sink: EventSink,
    state: Mutex<State>,
    /// Set to the number of problems after each load that changed something.
    error_gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl fmt::Debug for FileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSource").field("path", &self.path).field("poll_interval", &self.poll_interval).finish()
    }
}

/// Asks a running file source to load now; the reply comes after the events were delivered.
pub type ReloadRequest = oneshot::Sender<LoadReport>;

impl FileSource {
    pub fn new(path: PathBuf, poll_interval: Duration, sink: EventSink) -> Arc<FileSource> {
        Self::with_error_gauge(path, poll_interval, sink, None)
    }

    /// Like [`new`](Self::new), reporting the number of malformed manifests in `gauge`.
    pub fn with_error_gauge(
        path: PathBuf,
        poll_interval: Duration,
        sink: EventSink,
        error_gauge: Option<prometheus_client::metrics::gauge::Gauge>,
    ) -> Arc<FileSource> {
        Arc::new(FileSource { path, poll_interval, sink, state: Mutex::new(State::default()), error_gauge })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads everything and delivers a relist if anything changed on disk
    /// (always on the first load).
    pub fn load(&self) -> LoadReport {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = LoadReport::default();
        let files = match list_files(&self.path) {
            Ok(f) => f,
            Err(e) => {
                // The path vanished or is unreadable: keep everything as it is.
                let err =
                    ManifestError { file: self.path.clone(), document: None, object: None, message: e.to_string() };
                if state.fingerprint != Some(0) {
                    warn!(error = %err, "cannot read the manifests; keeping what is programmed");
                    state.fingerprint = Some(0);
                }
                report.errors.push(err);
                return report;
            }
        };
        let mut texts = Vec::new();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for f in &files {
            match std::fs::read_to_string(f) {
                Ok(t) => {
                    f.hash(&mut hasher);
                    t.hash(&mut hasher);
                    texts.push((f.clone(), Ok(t)));
                }
                Err(e) => {
                    f.hash(&mut hasher);
                    e.kind().hash(&mut hasher);
                    texts.push((f.clone(), Err(e)));
                }
            }
        }
        let fingerprint = hasher.finish();
        report.files = files.len();
        if state.fingerprint == Some(fingerprint) {
            let all = merged(&state.per_file);
            report.services = all.services.len();
            report.slices = all.slices.len();
            report.errors = state.errors.clone();
            return report;
        }
        state.fingerprint = Some(fingerprint);
        state.loads += 1;

        let mut per_file = BTreeMap::new();
        for (path, text) in texts {
            let previous = state.per_file.get(&path);
            let (objects, errors) = match text {
                Ok(t) => parse_file(&path, &t),
                Err(e) => (
                    Manifests::default(),
                    vec![ManifestError { file: path.clone(), document: None, object: None, message: e.to_string() }],
                ),
            };
            let objects = if errors.is_empty() {
                objects
            } else {
                for e in &errors {
                    warn!(error = %e, "malformed manifest; the file's previous objects stay in place until it is fixed");
                }
                // Good documents apply; nothing the file held before goes away.
                let mut kept = previous.cloned().unwrap_or_default();
                kept.extend(&objects);
                kept
            };
            report.errors.extend(errors);
            per_file.insert(path, objects);
        }
        state.per_file = per_file;
        state.errors = report.errors.clone();
        let all = merged(&state.per_file);
        report.changed = true;
        if let Some(g) = &self.error_gauge {
            g.set(report.errors.len() as i64);
        }
        report.services = all.services.len();
        report.slices = all.slices.len();
        info!(
            path = %self.path.display(),
            files = report.files,
            services = report.services,
            endpoint_slices = report.slices,
            nodes = all.nodes.len(),
            errors = report.errors.len(),
            "loaded manifests"
        );
        for ev in all.events() {
            (self.sink)(ev);
        }
        report
    }

    /// Loads now and then every poll interval, and whenever asked through
    /// `reloads`, until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        mut reloads: mpsc::Receiver<ReloadRequest>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reply = tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => None,
                req = reloads.recv() => req,
            };
            let this = self.clone();
            let report = tokio::task::spawn_blocking(move || this.load()).await.unwrap_or_default();
            if let Some(reply) = reply {
                let _ = reply.send(report);
            }
        }
    }
}

fn merged(per_file: &BTreeMap<PathBuf, Manifests>) -> Manifests {
    let mut all = Manifests::default();
    for (path, m) in per_file {
        for key in m.services.keys().filter(|k| all.services.contains_key(*k)) {
            warn!(file = %path.display(), service = %format!("{}/{}", key.0, key.1), "Service defined twice; the later file wins");
        }
        all.extend(m);
    }
    all
}

/// Reads the manifests once (for `inspect` and start-up): every good object, and the problems.
pub fn read_once(path: &Path) -> (Manifests, Vec<ManifestError>) {
    let mut all = Manifests::default();
    let mut errors = Vec::new();
    match list_files(path) {
        Ok(files) => {
            for f in files {
                match std::fs::read_to_string(&f) {
                    Ok(t) => {
                        let (m, e) = parse_file(&f, &t);
                        all.extend(&m);
                        errors.extend(e);
                    }
                    Err(e) => {
                        errors.push(ManifestError { file: f, document: None, object: None, message: e.to_string() })
                    }
                }
            }
        }
        Err(e) => errors.push(ManifestError {
            file: path.to_path_buf(),
            document: None,
            object: None,
            message: e.to_string(),
        }),
    }
    (all, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.0.1.1]
  conditions: {ready: true}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
"#;

    #[test]
    fn parses_multi_document_files_and_ignores_other_kinds() {
        let (m, errors) = parse_file(Path::new("web.yaml"), WEB);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.slices.len(), 1);
    }

    #[test]
    fn names_file_document_object_and_field() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: prod}\nspec:\n  ports: [{port: eighty}]\n";
        let (m, errors) = parse_file(Path::new("/m/x.yaml"), text);
        assert_eq!(m.services.len(), 1, "the good document is kept");
        assert_eq!(errors.len(), 1);
        let e = errors[0].to_string();
        assert!(e.starts_with("/m/x.yaml, document 2 (Service prod/bad): spec.ports[0].port"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let (_, errors) = parse_file(Path::new("/m/y.yaml"), "kind: [unclosed\n");
        assert!(errors[0].to_string().starts_with("/m/y.yaml: not valid YAML"), "{}", errors[0]);
    }

    #[test]
    fn lists_are_read() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: n1}\n";
        let (m, errors) = parse_file(Path::new("l.yaml"), text);
        assert!(errors.is_empty());
        assert!(m.nodes.contains_key("n1"));
    }
}
