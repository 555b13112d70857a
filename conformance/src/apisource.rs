//! The API server as the scenarios' object source (`--source apiserver`).
//!
//! [`ApiLab`] is one real control plane ([`crate::apiserver`]) for a whole
//! suite run, reachable from inside node1 through a [`Relay`] on node1's
//! loopback. Scenario objects are written through the API as an operator
//! would (server-side apply as the admin; the status of Services and Nodes
//! through their `status` subresource, as a cloud controller and a kubelet
//! write them) and deleted through it; the proxies under test list and watch
//! them with their own identities:
//!
//! - switchyard with a ServiceAccount token of `deploy/base/rbac.yaml` (applied as
//!   shipped), so every scenario also proves that RBAC sufficient;
//! - upstream kube-proxy as `system:kube-proxy` (the bootstrap policy's
//!   `system:node-proxier`).
//!
//! The API server adds one Service of its own, `default/kubernetes`
//! (10.96.0.1:443, without endpoints here): [`API_SERVICE`] names it so
//! drivers can leave it out of what they compare with a scenario.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use proxy_core::{ProgrammedState, ProxyEvent, ResourceEvent};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::apiserver::{ControlPlane, ControlPlaneConfig, FIELD_MANAGER, ReferenceBinaries};
use crate::error::{ConformanceError, Result};
use crate::lab::Lab;
use crate::patience::{patience, poll};
use crate::relay::Relay;
use crate::scenario::{Kind, ObjectKey, ObjectStore, object_key};

/// The shipped RBAC, applied to the API server as it is.
pub const RBAC: &str = include_str!("../../deploy/base/rbac.yaml");
/// The Service the API server makes for itself (`service` field of a `ProgrammedState` frontend).
pub const API_SERVICE: &str = "default/kubernetes";

/// A control plane serving one suite run, and a way into it from node1.
pub struct ApiLab {
    cp: ControlPlane,
    relay: Relay,
    /// Kubeconfigs whose server is the relay (for processes inside node1).
    switchyard_kubeconfig: PathBuf,
    kube_proxy_kubeconfig: PathBuf,
    objects: ApiObjects,
}

impl std::fmt::Debug for ApiLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiLab").field("cp", &self.cp).field("relay", &self.relay.addr()).finish_non_exhaustive()
    }
}

impl ApiLab {
    /// Starts etcd and kube-apiserver, applies `deploy/base/rbac.yaml`, and opens
    /// the relay in the lab's node1.
    pub async fn start(lab: &Lab, bins: &ReferenceBinaries) -> Result<ApiLab> {
        Self::start_with(lab, bins, &ControlPlaneConfig::default()).await
    }

    /// [`start`](Self::start) with another control-plane configuration.
    pub async fn start_with(lab: &Lab, bins: &ReferenceBinaries, config: &ControlPlaneConfig) -> Result<ApiLab> {
        let cp = ControlPlane::start(bins, config).await?;
        cp.apply_yaml(RBAC).await?;
        let target: SocketAddr = cp.server().trim_start_matches("https://").parse().map_err(|e| {
            ConformanceError::ControlPlane { component: "relay", message: format!("{}: {e}", cp.server()) }
        })?;
        let relay = Relay::start(&lab.node1(), target).await?;
        let server = format!("https://{}", relay.addr());
        let sa = cp.service_account_kubeconfig("kube-system", "switchyard").await?;
        let switchyard_kubeconfig = with_server(&sa, &server, &cp.dir().join("node1-switchyard.kubeconfig"))?;
        let kube_proxy_kubeconfig =
            with_server(cp.kube_proxy_kubeconfig(), &server, &cp.dir().join("node1-kube-proxy.kubeconfig"))?;
        let objects = ApiObjects::new(cp.admin_client());
        info!(server = %cp.server(), relay = %relay.addr(), "the API server serves the lab");
        Ok(ApiLab { cp, relay, switchyard_kubeconfig, kube_proxy_kubeconfig, objects })
    }

    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// The API server's address inside node1 (the relay).
    pub fn node1_server(&self) -> SocketAddr {
        self.relay.addr()
    }

    /// A kubeconfig for switchyard inside node1: the ServiceAccount
    /// `kube-system/switchyard` of `deploy/base/rbac.yaml`, with a fresh token
    /// (TokenRequest tokens expire; a long suite asks again per start).
    pub async fn switchyard_kubeconfig(&self) -> Result<PathBuf> {
        self.cp.service_account_kubeconfig("kube-system", "switchyard").await?;
        Ok(self.switchyard_kubeconfig.clone())
    }

    /// [`switchyard_kubeconfig`](Self::switchyard_kubeconfig) without asking for a new token.
    pub fn switchyard_kubeconfig_path(&self) -> &Path {
        &self.switchyard_kubeconfig
    }

    /// A kubeconfig for upstream kube-proxy inside node1 (`CN=system:kube-proxy`).
    pub fn kube_proxy_kubeconfig(&self) -> &Path {
        &self.kube_proxy_kubeconfig
    }

    /// The scenario objects in the API server.
    pub fn objects(&self) -> &ApiObjects {
        &self.objects
    }
}

/// Writes a copy of a kubeconfig (JSON, as [`ControlPlane`] writes them)
/// with another server (a [`Relay`]'s address, for a process in a namespace).
pub fn with_server(kubeconfig: &Path, server: &str, out: &Path) -> Result<PathBuf> {
    let io = |what: &str, source| ConformanceError::ControlPlaneIo {
        operation: format!("{what} {}", kubeconfig.display()),
        source,
    };
    let text = std::fs::read_to_string(kubeconfig).map_err(|e| io("reading", e))?;
    let mut v: Value = serde_json::from_str(&text).map_err(|e| io("parsing", std::io::Error::other(e)))?;
    for cluster in v["clusters"].as_array_mut().into_iter().flatten() {
        cluster["cluster"]["server"] = Value::String(server.to_string());
    }
    std::fs::write(out, v.to_string()).map_err(|e| io("writing a copy of", e))?;
    Ok(out.to_path_buf())
}

/// Drops `default/kubernetes` (the API server's own Service) from what a
/// proxy programmed: scenarios do not know it.
/// A backend that cannot name Services is matched on the address: the
/// first of each Service CIDR, port 443.
pub fn without_api_service(mut state: ProgrammedState) -> ProgrammedState {
    let api_ips: Vec<std::net::IpAddr> =
        ControlPlaneConfig::default().service_cidrs.iter().filter_map(|c| c.hosts().next()).collect();
    state.frontends.retain(|frontend, programmed| {
        let named = programmed
            .service
            .as_deref()
            .is_some_and(|s| s == API_SERVICE || s.starts_with(&format!("{API_SERVICE}:")));
        let at = frontend.port == 443 && frontend.ip.is_some_and(|ip| api_ips.contains(&ip));
        !(named || at)
    });
    state
}

/// The scenario objects as the API server holds them: what was written, so
/// it can be removed again.
pub struct ApiObjects {
    client: kube::Client,
    state: Mutex<Written>,
}

#[derive(Default)]
struct Written {
    keys: BTreeSet<ObjectKey>,
    namespaces: BTreeSet<String>,
}

impl std::fmt::Debug for ApiObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiObjects")
    }
}

/// An API error in one line: the API's own message for a refusal (kube's
/// `Display` of it repeats the message and dumps the whole `Status`).
fn api_err(operation: String) -> impl FnOnce(kube::Error) -> ConformanceError {
    move |source| match source {
        kube::Error::Api(s) => ConformanceError::ControlPlane {
            component: "API server",
            message: format!("{operation}: {} ({} {})", s.message, s.code, s.reason),
        },
        source => ConformanceError::Api { operation, source },
    }
}

/// A refusal worth retrying: a ClusterIP or node port of a Service deleted a
/// moment ago is released asynchronously by the allocator.
fn transient(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || (s.code == 422 && s.message.contains("already allocated")))
}

impl ApiObjects {
    pub fn new(client: kube::Client) -> Self {
        ApiObjects { client, state: Mutex::new(Written::default()) }
    }

    /// Makes the API hold exactly `objects` (of those written through this
    /// value): applies every one, deletes what was written before and is gone.
    pub async fn replace_all(&self, objects: &ObjectStore) -> Result<()> {
        let wanted: BTreeSet<ObjectKey> = objects.iter().map(|(k, _)| k.clone()).collect();
        let stale: Vec<ObjectKey> = self.state.lock().await.keys.difference(&wanted).cloned().collect();
        for key in stale.iter().rev() {
            self.delete(key).await?;
        }
        // Nodes first (a proxy waits for its Node), Services before their slices.
        for kind in [Kind::Node, Kind::Service, Kind::EndpointSlice] {
            for (key, obj) in objects.iter().filter(|(k, _)| k.0 == kind) {
                debug!(?key, "applying");
                self.put(obj).await?;
            }
        }
        Ok(())
    }

    /// Deletes everything written through this value.
    pub async fn clear(&self) -> Result<()> {
        let keys: Vec<ObjectKey> = self.state.lock().await.keys.iter().cloned().collect();
        // Slices, then Services, then Nodes: the reverse of creation.
        for kind in [Kind::EndpointSlice, Kind::Service, Kind::Node] {
            for key in keys.iter().filter(|k| k.0 == kind) {
                self.delete(key).await?;
            }
        }
        Ok(())
    }

    /// Applies the events of an update in order (a churn's intermediate
    /// states too); returns whether any of them changed what the API holds
    /// (server-side apply of an unchanged object is a no-op that no watch sees).
    pub async fn push(&self, events: &[ProxyEvent]) -> Result<bool> {
        let mut changed = false;
        for ev in events {
            let (obj, delete) = match ev {
                ProxyEvent::Service(e) => to_json(e)?,
                ProxyEvent::EndpointSlice(e) => to_json(e)?,
                ProxyEvent::Node(e) => to_json(e)?,
            };
            let Some(obj) = obj else { continue };
            if delete {
                let key = object_key(&obj).map_err(|message| invalid(&message))?;
                self.delete(&key).await?;
                changed = true;
            } else {
                changed |= self.put(&obj).await?;
            }
        }
        Ok(changed)
    }

    /// Server-side apply of one object, then of its `status` (Services: the
    /// load balancer; Nodes: addresses) through the status subresource.
    /// Returns whether the object changed.
    pub async fn put(&self, obj: &Value) -> Result<bool> {
        let key = object_key(obj).map_err(|message| invalid(&message))?;
        let (kind, ns, name) = key.clone();
        if kind != Kind::Node {
            self.ensure_namespace(&ns).await?;
        }
        let mut body = obj.clone();
        let status = body.as_object_mut().and_then(|o| o.remove("status"));
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            // What a scenario may carry that an apply must not: server-owned fields.
            for f in ["resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"] {
                meta.remove(f);
            }
        }
        let what = format!("{kind:?} {}", if ns.is_empty() { name.clone() } else { format!("{ns}/{name}") });
        let client = self.client.clone();
        let waited = poll(patience(), || {
            let (client, body, status) = (client.clone(), body.clone(), status.clone());
            let (ns, name) = (ns.clone(), name.clone());
            async move {
                let r = match kind {
                    Kind::Service => apply_typed(Api::<Service>::namespaced(client, &ns), &name, &body, status).await,
                    Kind::EndpointSlice => {
                        apply_typed(Api::<EndpointSlice>::namespaced(client, &ns), &name, &body, status).await
                    }
                    Kind::Node => apply_typed(Api::<Node>::all(client), &name, &body, status).await,
                };
                match r {
                    Err(e) if transient(&e) => Err(e),
                    other => Ok(other),
                }
            }
        })
        .await;
        let changed = waited.result.and_then(|r| r).map_err(api_err(format!("applying {what}")))?;
        self.state.lock().await.keys.insert(key);
        Ok(changed)
    }

    /// Deletes one object (already gone is fine).
    pub async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let (kind, ns, name) = key;
        let dp = DeleteParams::default();
        let r = match kind {
            Kind::Service => Api::<Service>::namespaced(self.client.clone(), ns).delete(name, &dp).await.map(drop),
            Kind::EndpointSlice => {
                Api::<EndpointSlice>::namespaced(self.client.clone(), ns).delete(name, &dp).await.map(drop)
            }
            Kind::Node => Api::<Node>::all(self.client.clone()).delete(name, &dp).await.map(drop),
        };
        match r {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(format!("deleting {kind:?} {ns}/{name}"))(e)),
        }
        self.state.lock().await.keys.remove(key);
        Ok(())
    }

    async fn ensure_namespace(&self, ns: &str) -> Result<()> {
        if self.state.lock().await.namespaces.contains(ns) {
            return Ok(());
        }
        let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        Api::<Namespace>::all(self.client.clone())
            .patch(ns, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
            .await
            .map_err(api_err(format!("creating Namespace {ns}")))?;
        self.state.lock().await.namespaces.insert(ns.to_string());
        Ok(())
    }
}

fn invalid(message: &str) -> ConformanceError {
    ConformanceError::ControlPlane { component: "apply", message: message.to_string() }
}

/// The object of an update event as JSON, and whether it is a delete.
fn to_json<K: serde::Serialize>(ev: &ResourceEvent<K>) -> Result<(Option<Value>, bool)> {
    let (obj, delete) = match ev {
        ResourceEvent::Apply(o) | ResourceEvent::InitApply(o) => (o, false),
        ResourceEvent::Delete(o) => (o, true),
        ResourceEvent::Init | ResourceEvent::InitDone => return Ok((None, false)),
    };
    let v = serde_json::to_value(obj).map_err(|e| invalid(&format!("an object that does not serialize: {e}")))?;
    Ok((Some(v), delete))
}

/// Applies `body`, then puts `status` (none: empty) through the status
/// subresource; returns whether the resourceVersion moved.
///
/// The status is replaced (PUT), as a kubelet updates its Node, not
/// server-side applied: a dual-stack Node has two `InternalIP` addresses,
/// and server-side apply treats `status.addresses` as a map keyed on `type`,
/// so it refuses such a Node ("duplicate entries for key
/// [type=\"InternalIP\"]", seen against kube-apiserver v1.37.2).
async fn apply_typed<K>(api: Api<K>, name: &str, body: &Value, status: Option<Value>) -> kube::Result<bool>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let before = api.get_opt(name).await?.and_then(|o| o.resource_version());
    let applied = api.patch(name, &params, &Patch::Apply(body)).await?;
    let mut after = applied.resource_version();
    let mut current = serde_json::to_value(&applied).map_err(kube::Error::SerdeError)?;
    let wanted = status.unwrap_or_else(|| Value::Object(Default::default()));
    if current.get("status").unwrap_or(&Value::Null) != &wanted
        && !(wanted.as_object().is_some_and(|o| o.is_empty()) && current.get("status").is_none())
    {
        current["status"] = wanted;
        let object: K = serde_json::from_value(current).map_err(kube::Error::SerdeError)?;
        after = api.replace_status(name, &Default::default(), &object).await?.resource_version();
    }
    Ok(before != after)
}
