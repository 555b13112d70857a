//! One manifest file's bytes into the objects the proxy reads.
//!
//! Documents are read one at a time with serde-saphyr's streaming reader,
//! whose budget applies per document: a file may hold any number of
//! documents (a cluster's state split one object per document), while each
//! document keeps the parser's protection against alias bombs. Its default
//! whole-stream budget refused files past 1,024 documents (issue 18,
//! finding 2); its per-document node and event caps are raised to follow
//! the file's size, so one `List` of 100,000 objects loads too.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use tracing::debug;

/// A problem with one file, or one document in it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based document number, when the problem is in one document.
    pub document: Option<usize>,
    /// `Service default/web`, when the document said what it is.
    pub object: Option<String>,
    pub message: String,
}

impl ManifestError {
    pub(crate) fn file(file: &Path, message: impl Into<String>) -> ManifestError {
        ManifestError { file: file.to_path_buf(), document: None, object: None, message: message.into() }
    }
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

/// The kinds the proxy reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
}

/// What identifies an object: kind, namespace (empty for Nodes) and name,
/// as the API server would.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Node => write!(f, "Node {}", self.name),
            k => write!(f, "{} {}/{}", k.as_str(), self.namespace, self.name),
        }
    }
}

/// One object the proxy reads.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant, reason = "held behind an Arc; boxing would add an allocation per object")]
pub enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Node(Node),
}

/// An object of a file, with the document it came from (for messages).
#[derive(Clone, Debug)]
pub struct Held {
    pub document: usize,
    pub object: Arc<Object>,
}

/// What one file holds.
#[derive(Debug, Default)]
pub struct ParsedFile {
    /// The good objects; the first document wins when a key repeats.
    pub objects: BTreeMap<ObjectKey, Held>,
    pub errors: Vec<ManifestError>,
    /// Documents other than null ones. A file without any is "empty".
    pub documents: usize,
}

/// What an empty file is told. An empty file is an error, never "delete
/// everything": a truncating writer or a mistaken `> file` must not take the
/// node's Services down (issue 18, finding 3).
pub const EMPTY_FILE: &str = "the file is empty (no document other than whitespace, comments, `---` or null); \
     its objects stay in place: delete the file, or write `{apiVersion: v1, kind: List, items: []}`, to remove them";

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

fn name_of(meta: &ObjectMeta) -> Result<String, String> {
    meta.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| "metadata.name: is required".into())
}

/// `(namespace, name)`; manifests without a namespace land in `default`, as `kubectl apply` does.
fn namespaced(meta: &mut ObjectMeta) -> Result<(String, String), String> {
    let name = name_of(meta)?;
    let ns = meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    meta.namespace = Some(ns.clone());
    Ok((ns, name))
}

/// Adds one document (or a List's items) to `out`.
fn add_document(doc: Value, out: &mut Vec<(ObjectKey, Object)>) -> Result<(), String> {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    let kind = doc.get("kind").and_then(Value::as_str).ok_or("kind: is required")?.to_string();
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => {
            let mut svc: Service = typed(doc)?;
            let (namespace, name) = namespaced(&mut svc.metadata)?;
            out.push((ObjectKey { kind: Kind::Service, namespace, name }, Object::Service(svc)));
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let mut slice: EndpointSlice = typed(doc)?;
            let (namespace, name) = namespaced(&mut slice.metadata)?;
            out.push((ObjectKey { kind: Kind::EndpointSlice, namespace, name }, Object::EndpointSlice(slice)));
        }
        ("v1", "Node") => {
            let node: Node = typed(doc)?;
            let name = name_of(&node.metadata)?;
            out.push((ObjectKey { kind: Kind::Node, namespace: String::new(), name }, Object::Node(node)));
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

/// The parser's options for a file of `len` bytes: the budget is enforced
/// per document (the streaming reader does that), with the node and event
/// caps raised to what a document of this size can legitimately hold
/// (without aliases a node takes at least one byte). Alias and anchor caps
/// keep their defaults: those are what stop a small file from expanding
/// into a huge one.
fn options(len: usize) -> serde_saphyr::Options {
    let room = len.saturating_mul(2).saturating_add(1_000_000);
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: None,
            max_documents: usize::MAX,
            max_events: room,
            max_nodes: room,
            max_total_scalar_bytes: room,
        },
        // One line per problem: the file and document are named by us.
        with_snippet: false,
    }
}

/// Parses one file. Never fails: problems are returned with the good objects.
pub fn parse(path: &Path, bytes: &[u8]) -> ParsedFile {
    let mut out = ParsedFile::default();
    let mut reader = bytes;
    let docs = serde_saphyr::read_with_options::<_, Value>(&mut reader, options(bytes.len()));
    let mut first_doc: BTreeMap<ObjectKey, usize> = BTreeMap::new();
    for result in docs {
        // Null documents are skipped by the reader; numbers count the others.
        out.documents += 1;
        let number = out.documents;
        let doc = match result {
            Ok(doc) => doc,
            Err(e) => {
                out.errors.push(ManifestError {
                    file: path.to_path_buf(),
                    document: Some(number),
                    object: None,
                    message: format!("not valid YAML: {e}"),
                });
                continue;
            }
        };
        let object = describe(&doc);
        if !doc.is_object() {
            out.errors.push(ManifestError {
                file: path.to_path_buf(),
                document: Some(number),
                object,
                message: "expected a Kubernetes object (a mapping)".into(),
            });
            continue;
        }
        let mut found = Vec::new();
        if let Err(message) = add_document(doc, &mut found) {
            out.errors.push(ManifestError { file: path.to_path_buf(), document: Some(number), object, message });
            continue;
        }
        for (key, obj) in found {
            if let Some(first) = first_doc.get(&key) {
                out.errors.push(ManifestError {
                    file: path.to_path_buf(),
                    document: Some(number),
                    object: Some(key.to_string()),
                    message: format!(
                        "duplicate: {key} is already defined in document {first} of this file, which is used"
                    ),
                });
                continue;
            }
            first_doc.insert(key.clone(), number);
            out.objects.insert(key, Held { document: number, object: Arc::new(obj) });
        }
    }
    if out.documents == 0 {
        out.errors.push(ManifestError::file(path, EMPTY_FILE));
    }
    out
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

    fn keys(p: &ParsedFile) -> Vec<String> {
        p.objects.keys().map(ToString::to_string).collect()
    }

    #[test]
    fn parses_multi_document_files_and_ignores_other_kinds() {
        let p = parse(Path::new("web.yaml"), WEB.as_bytes());
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(keys(&p), vec!["Service default/web", "EndpointSlice default/web-1"]);
        assert_eq!(p.documents, 3);
    }

    #[test]
    fn names_file_document_object_and_field() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: prod}\nspec:\n  ports: [{port: eighty}]\n";
        let p = parse(Path::new("/m/x.yaml"), text.as_bytes());
        assert_eq!(keys(&p), vec!["Service default/ok"], "the good document is kept");
        assert_eq!(p.errors.len(), 1);
        let e = p.errors[0].to_string();
        assert!(e.starts_with("/m/x.yaml, document 2 (Service prod/bad): spec.ports[0].port"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_file_and_document() {
        let p = parse(Path::new("/m/y.yaml"), b"kind: [unclosed\n");
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        let e = p.errors[0].to_string();
        assert!(e.starts_with("/m/y.yaml, document 1: not valid YAML"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        // Documents before the broken one are still read.
        let text = format!("{WEB}---\nkind: [unclosed\n");
        let p = parse(Path::new("/m/y.yaml"), text.as_bytes());
        assert_eq!(p.objects.len(), 2);
        assert!(p.errors[0].to_string().starts_with("/m/y.yaml, document 4: not valid YAML"), "{:?}", p.errors);
    }

    #[test]
    fn lists_are_read() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: n1}\n";
        let p = parse(Path::new("l.yaml"), text.as_bytes());
        assert!(p.errors.is_empty());
        assert_eq!(keys(&p), vec!["Node n1"]);
    }

    #[test]
    fn empty_files_are_errors_but_an_empty_list_is_not() {
        for text in ["", "  \n\n", "# nothing here\n", "---\n---\n", "--- # c\n...\n", "~\n---\nnull\n"] {
            let p = parse(Path::new("/m/e.yaml"), text.as_bytes());
            assert_eq!(p.errors.len(), 1, "{text:?}: {:?}", p.errors);
            assert!(p.errors[0].to_string().starts_with("/m/e.yaml: the file is empty"), "{}", p.errors[0]);
        }
        let p = parse(Path::new("/m/e.yaml"), b"apiVersion: v1\nkind: List\nitems: []\n");
        assert!(p.errors.is_empty() && p.objects.is_empty(), "{:?}", p.errors);
        let p = parse(Path::new("/m/e.json"), br#"{"apiVersion": "v1", "kind": "List", "items": []}"#);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
    }

    #[test]
    fn a_key_defined_twice_in_one_file_keeps_the_first() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default}\nspec: {clusterIP: 10.96.0.2}\n";
        let p = parse(Path::new("/m/d.yaml"), text.as_bytes());
        assert_eq!(p.errors.len(), 1);
        let e = p.errors[0].to_string();
        assert!(e.contains("/m/d.yaml, document 2 (Service default/a): duplicate") && e.contains("document 1"), "{e}");
        let Object::Service(svc) = &*p.objects.values().next().unwrap().object else { panic!("a Service") };
        assert_eq!(svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()), Some("10.96.0.1"));
    }

    #[test]
    fn duplicate_mapping_keys_are_errors() {
        let p = parse(Path::new("/m/k.yaml"), b"apiVersion: v1\nkind: Service\nkind: Node\nmetadata: {name: a}\n");
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        assert!(p.objects.is_empty());
    }

    #[test]
    fn thousands_of_documents_load() {
        // serde-saphyr's default budget stopped at 1,024 documents.
        let mut text = String::new();
        for i in 0..1_500 {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec: {{clusterIP: 10.96.{}.{}}}\n",
                i / 250,
                i % 250
            ));
        }
        let p = parse(Path::new("/m/big.yaml"), text.as_bytes());
        assert!(p.errors.is_empty(), "{:?}", p.errors.first());
        assert_eq!(p.objects.len(), 1_500);
    }
}
