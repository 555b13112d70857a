//! A real control plane for tests: upstream etcd and kube-apiserver, started
//! on loopback for one test run.
//!
//! The binaries are built from `reference/` by `./x reference` (see
//! [`ReferenceBinaries::locate`]). [`ControlPlane::start`] gives each run its
//! own directory, ports and certificates (made at run time with rcgen), starts
//! etcd, then kube-apiserver with client-certificate authentication and RBAC
//! on, and waits until `/readyz` answers ok. It writes two kubeconfigs: an
//! admin (`O=system:masters`) and kube-proxy's identity (`CN=system:kube-proxy`,
//! which the bootstrap policy binds to `system:node-proxier`);
//! [`ControlPlane::service_account_kubeconfig`] adds a ServiceAccount's token
//! (the identity `deploy/base/rbac.yaml` grants). Both processes are killed by pid
//! and the directory removed when the value is dropped, on every path; they
//! also get `PR_SET_PDEATHSIG`, so a test process killed outright does not
//! leave them behind.
//!
//! The API server is set up for a cluster without real nodes or pods:
//! `--endpoint-reconciler-type none` (nothing publishes the `kubernetes`
//! Service's endpoints), a Service CIDR per family covering the scenarios'
//! ClusterIPs ([`addresses::SERVICE_CIDR_V4`], [`addresses::SERVICE_CIDR_V6`]),
//! the default node-port range 30000-32767 (the scenarios use 30016-32034),
//! and objects stored as JSON in etcd (`--storage-media-type application/json`),
//! so a test can write an object the API would refuse straight into etcd.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::addresses;
use crate::error::{ConformanceError, Result};
use crate::patience::scaled;

/// The Kubernetes release `reference/go.mod` pins (a test checks they agree).
pub const REFERENCE_VERSION: &str = "v1.37.2";
/// A directory holding `etcd`, `kube-apiserver` and `kube-proxy`, overriding the cache.
pub const REFERENCE_BIN_ENV: &str = "SWITCHYARD_REFERENCE_BIN";
/// The cache `./x reference` builds into (`<dir>/<version>/bin`).
pub const REFERENCE_DIR_ENV: &str = "SWITCHYARD_REFERENCE_DIR";
const DEFAULT_REFERENCE_DIR: &str = "/var/cache/switchyard/reference";
/// The field manager of everything this module applies.
pub const FIELD_MANAGER: &str = "switchyard-lab";

/// Where the upstream binaries are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceBinaries {
    pub dir: PathBuf,
}

impl ReferenceBinaries {
    /// `$SWITCHYARD_REFERENCE_BIN`, else `$SWITCHYARD_REFERENCE_DIR/<version>/bin`,
    /// else `/var/cache/switchyard/reference/<version>/bin`; an error naming
    /// `./x reference` when a binary is missing there.
    pub fn locate() -> Result<ReferenceBinaries> {
        let dir = match std::env::var_os(REFERENCE_BIN_ENV) {
            Some(d) => PathBuf::from(d),
            None => std::env::var_os(REFERENCE_DIR_ENV)
                .map_or_else(|| PathBuf::from(DEFAULT_REFERENCE_DIR), PathBuf::from)
                .join(REFERENCE_VERSION)
                .join("bin"),
        };
        let bins = ReferenceBinaries { dir };
        for path in [bins.etcd(), bins.kube_apiserver(), bins.kube_proxy()] {
            if !path.is_file() {
                return Err(ConformanceError::ReferenceMissing { path });
            }
        }
        Ok(bins)
    }

    pub fn etcd(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    pub fn kube_apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }

    pub fn kube_proxy(&self) -> PathBuf {
        self.dir.join("kube-proxy")
    }
}

/// How the control plane is set up.
#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    /// `--service-cluster-ip-range`: one CIDR per family (at most two).
    pub service_cidrs: Vec<IpNet>,
    /// `--service-node-port-range`.
    pub node_port_range: RangeInclusive<u16>,
    /// Where etcd and the API server listen (also a SAN of the serving certificate).
    pub bind_address: IpAddr,
    /// More kube-apiserver flags (later ones win), e.g. `--default-watch-cache-size=0`.
    pub extra_apiserver_args: Vec<String>,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        // The lab's constants are valid CIDRs; a test pins that.
        let cidrs = [addresses::SERVICE_CIDR_V4, addresses::SERVICE_CIDR_V6];
        ControlPlaneConfig {
            service_cidrs: cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
            node_port_range: 30000..=32767,
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            extra_apiserver_args: Vec::new(),
        }
    }
}

/// The lab's certificate authority: signs the serving and client certificates.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority")
    }
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> ConformanceError + '_ {
    move |source| ConformanceError::Certificate { what: what.to_string(), source }
}

impl Authority {
    /// A new CA; returns it and its certificate (PEM).
    fn new() -> Result<(Authority, String)> {
        let key = KeyPair::generate().map_err(cert_err("CA"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "switchyard-lab-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).map_err(cert_err("CA"))?;
        Ok((Authority { issuer: Issuer::new(params, key) }, cert.pem()))
    }

    /// A certificate and its key (both PEM).
    fn issue(
        &self,
        what: &str,
        common_name: &str,
        organization: Option<&str>,
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(String, String)> {
        let key = KeyPair::generate().map_err(cert_err(what))?;
        let mut params = CertificateParams::new(sans).map_err(cert_err(what))?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err(what))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// etcd and kube-apiserver, running for one test; killed on drop.
pub struct ControlPlane {
    dir: PathBuf,
    etcd: Child,
    /// `None` while stopped ([`ControlPlane::stop_apiserver`]).
    apiserver: Option<Child>,
    /// How it was started, to start it again on the same port and storage.
    apiserver_program: PathBuf,
    apiserver_args: Vec<std::ffi::OsString>,
    etcd_url: String,
    server: String,
    authority: Authority,
    admin_kubeconfig: PathBuf,
    kube_proxy_kubeconfig: PathBuf,
    admin: kube::Client,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("etcd_url", &self.etcd_url)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Starts are retried this often when a port picked as free was taken
/// before the process bound it (another test on the machine).
const PORT_RACE_ATTEMPTS: usize = 3;

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    ///
    /// The wait is bounded by progress, not by a fixed time: it goes on while
    /// the processes run and their logs or the API server's `/readyz` checks
    /// change, and fails when nothing has changed for a minute (scaled by
    /// `SWITCHYARD_TEST_PATIENCE_MS`) or a process exits.
    ///
    /// Children get `PR_SET_PDEATHSIG`, which follows the *thread* that
    /// spawned them: call this from a thread that outlives the value (a test's
    /// own thread or a runtime worker, not `spawn_blocking`).
    pub async fn start(bins: &ReferenceBinaries, config: &ControlPlaneConfig) -> Result<ControlPlane> {
        let mut attempt = 1;
        loop {
            match Self::start_once(bins, config).await {
                Err(ConformanceError::ControlPlane { message, .. })
                    if message.contains("address already in use") && attempt < PORT_RACE_ATTEMPTS =>
                {
                    warn!(attempt, "a control-plane port was taken meanwhile; retrying with other ports");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(bins: &ReferenceBinaries, config: &ControlPlaneConfig) -> Result<ControlPlane> {
        let dir = std::env::temp_dir().join(format!(
            "swy-cp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etcd")).map_err(io_err(format!("creating {}", dir.display())))?;
        // From here on, a failure removes the directory and kills what started.
        let mut guard = Cleanup { dir: Some(dir.clone()), etcd: None, apiserver: None };

        let bind = config.bind_address;
        let host = match bind {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let (client_port, peer_port, secure_port) = (free_port(bind)?, free_port(bind)?, free_port(bind)?);
        let etcd_url = format!("http://{host}:{client_port}");
        let peer_url = format!("http://{host}:{peer_port}");
        let server = format!("https://{host}:{secure_port}");

        // Certificates.
        let (authority, ca_pem) = Authority::new()?;
        let mut sans: Vec<String> = vec![
            bind.to_string(),
            "127.0.0.1".into(),
            "localhost".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        // The `kubernetes` Service's ClusterIP: the first address of each range.
        sans.extend(config.service_cidrs.iter().filter_map(|c| c.hosts().next()).map(|ip| ip.to_string()));
        sans.dedup();
        let (serving_cert, serving_key) =
            authority.issue("serving", "kube-apiserver", None, sans, ExtendedKeyUsagePurpose::ServerAuth)?;
        let sa_key = KeyPair::generate().map_err(cert_err("service-account signing key"))?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
            Ok(path)
        };
        let ca = write("ca.crt", &ca_pem)?;
        let tls_cert = write("serving.crt", &serving_cert)?;
        let tls_key = write("serving.key", &serving_key)?;
        let sa_private = write("sa.key", &sa_key.serialize_pem())?;
        let sa_public = write("sa.pub", &sa_key.public_key_pem())?;
        let admin_kubeconfig =
            write_client_kubeconfig(&authority, &dir, &server, &ca, "admin", "lab-admin", Some("system:masters"))?;
        let kube_proxy_kubeconfig =
            write_client_kubeconfig(&authority, &dir, &server, &ca, "kube-proxy", "system:kube-proxy", None)?;

        // etcd.
        let mut etcd = Command::new(bins.etcd());
        etcd.arg("--name=lab")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=lab={peer_url}"))
            // A throwaway store: durability buys nothing and fsyncs cost seconds on a loaded disk.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let etcd_log = dir.join("etcd.log");
        let etcd_child = guard.etcd.insert(spawn(etcd, &etcd_log, "etcd")?);
        let etcd_addr = format!("{host}:{client_port}");
        wait_ready("etcd", etcd_child, &etcd_log, || {
            let addr = etcd_addr.clone();
            async move {
                match plain_get(&addr, "/health").await {
                    Ok((200, body)) if body.contains("\"true\"") => Ok(()),
                    Ok((code, body)) => Err(format!("/health {code}: {}", body.trim())),
                    Err(e) => Err(format!("/health: {e}")),
                }
            }
        })
        .await?;
        debug!(%etcd_url, "etcd ready");

        // kube-apiserver.
        let cidrs: Vec<String> = config.service_cidrs.iter().map(ToString::to_string).collect();
        let mut apiserver = Command::new(bins.kube_apiserver());
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--bind-address={bind}"))
            .arg(format!("--advertise-address={bind}"))
            .arg(format!("--secure-port={secure_port}"))
            .arg(format!("--tls-cert-file={}", tls_cert.display()))
            .arg(format!("--tls-private-key-file={}", tls_key.display()))
            .arg(format!("--client-ca-file={}", ca.display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-cluster-ip-range={}", cidrs.join(",")))
            .arg(format!(
                "--service-node-port-range={}-{}",
                config.node_port_range.start(),
                config.node_port_range.end()
            ))
            // No node runs the API server's Service endpoints here.
            .arg("--endpoint-reconciler-type=none")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", sa_public.display()))
            .arg(format!("--service-account-signing-key-file={}", sa_private.display()))
            .arg("--storage-media-type=application/json")
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg("--profiling=false")
            .args(&config.extra_apiserver_args);
        let apiserver_args: Vec<std::ffi::OsString> = apiserver.get_args().map(ToOwned::to_owned).collect();
        let apiserver_log = dir.join("kube-apiserver.log");
        let apiserver_child = guard.apiserver.insert(spawn(apiserver, &apiserver_log, "kube-apiserver")?);

        let admin = client_from(&admin_kubeconfig).await?;
        wait_apiserver_ready(&admin, apiserver_child, &apiserver_log).await?;
        info!(%server, dir = %dir.display(), "control plane ready");

        let (Some(etcd), Some(apiserver)) = (guard.etcd.take(), guard.apiserver.take()) else {
            let message = "lost track of its processes".to_string();
            return Err(ConformanceError::ControlPlane { component: "control plane", message });
        };
        guard.dir = None;
        Ok(ControlPlane {
            dir,
            etcd,
            apiserver: Some(apiserver),
            apiserver_program: bins.kube_apiserver(),
            apiserver_args,
            etcd_url,
            server,
            authority,
            admin_kubeconfig,
            kube_proxy_kubeconfig,
            admin,
        })
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// etcd's client URL (plain HTTP on the bind address).
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// This run's directory (certificates, kubeconfigs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig for `O=system:masters`.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// A kubeconfig for `CN=system:kube-proxy` (bound to `system:node-proxier`
    /// by the API server's bootstrap policy): upstream kube-proxy's identity.
    pub fn kube_proxy_kubeconfig(&self) -> &Path {
        &self.kube_proxy_kubeconfig
    }

    /// A client with the admin identity.
    pub fn admin_client(&self) -> kube::Client {
        self.admin.clone()
    }

    /// A kubeconfig with a new client certificate for `user` (and one group).
    pub fn client_kubeconfig(&self, user: &str, group: Option<&str>) -> Result<PathBuf> {
        let file = format!("user-{}", sanitize(user));
        write_client_kubeconfig(&self.authority, &self.dir, &self.server, &self.dir.join("ca.crt"), &file, user, group)
    }

    /// A kubeconfig authenticating as ServiceAccount `namespace/name` with a
    /// token from the TokenRequest API (valid for an hour), read from a
    /// `tokenFile` as a deployment's kubeconfig would.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let api: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() },
            ..TokenRequest::default()
        };
        let answer = api.create_token_request(name, &PostParams::default(), &request).await.map_err(|source| {
            ConformanceError::Api {
                operation: format!("requesting a token for ServiceAccount {namespace}/{name}"),
                source,
            }
        })?;
        let token = answer.status.map(|s| s.token).unwrap_or_default();
        let file = format!("sa-{}-{}", sanitize(namespace), sanitize(name));
        let token_path = self.dir.join(format!("{file}.token"));
        std::fs::write(&token_path, token).map_err(io_err(format!("writing {}", token_path.display())))?;
        let user = serde_json::json!({ "tokenFile": token_path });
        write_kubeconfig(
            &self.dir.join(format!("{file}.kubeconfig")),
            &self.server,
            &self.dir.join("ca.crt"),
            &file,
            user,
        )
    }

    /// Applies every document of a YAML text as the admin (server-side
    /// apply, field manager [`FIELD_MANAGER`], forced); returns `Kind ns/name`
    /// of each. A namespaced object without a namespace goes to `default`.
    pub async fn apply_yaml(&self, text: &str) -> Result<Vec<String>> {
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text)
            .map_err(|e| ConformanceError::ControlPlane { component: "apply", message: format!("not YAML: {e}") })?;
        let mut applied = Vec::new();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            applied.push(self.apply(&doc).await?);
        }
        Ok(applied)
    }

    /// Applies one object (server-side apply as the admin); returns `Kind ns/name`.
    pub async fn apply(&self, object: &serde_json::Value) -> Result<String> {
        let field = |f: &str| object.get(f).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let name = object.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let what = format!("{kind} {name}");
        if api_version.is_empty() || kind.is_empty() || name.is_empty() {
            let message = format!("{what}: an object needs apiVersion, kind and metadata.name");
            return Err(ConformanceError::ControlPlane { component: "apply", message });
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let gvk = GroupVersionKind::gvk(group, version, &kind);
        let (resource, caps) = kube::discovery::pinned_kind(&self.admin, &gvk).await.map_err(|source| {
            ConformanceError::Api { operation: format!("discovering {api_version} {kind}"), source }
        })?;
        let (api, label) = if caps.scope == Scope::Namespaced {
            let ns = object.pointer("/metadata/namespace").and_then(|v| v.as_str()).unwrap_or("default");
            (Api::<DynamicObject>::namespaced_with(self.admin.clone(), ns, &resource), format!("{kind} {ns}/{name}"))
        } else {
            (Api::<DynamicObject>::all_with(self.admin.clone(), &resource), what)
        };
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
            .await
            .map_err(|source| ConformanceError::Api { operation: format!("applying {label}"), source })?;
        Ok(label)
    }

    /// Kills kube-apiserver (SIGKILL, by pid): clients see connections
    /// refused until [`start_apiserver`](Self::start_apiserver). etcd keeps running.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            kill(&mut child);
            info!(server = %self.server, "kube-apiserver stopped");
        }
    }

    /// Starts kube-apiserver again with the same flags (port, certificates,
    /// etcd) and waits until it is ready. Its log is appended to.
    /// Like [`start`](Self::start), call it from a thread that outlives the process.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            return Ok(());
        }
        let log = self.dir.join("kube-apiserver.log");
        let mut cmd = Command::new(&self.apiserver_program);
        cmd.args(&self.apiserver_args);
        let child = self.apiserver.insert(spawn_appending(cmd, &log, "kube-apiserver")?);
        wait_apiserver_ready(&self.admin, child, &log).await?;
        info!(server = %self.server, "kube-apiserver started again");
        Ok(())
    }

    /// Stops and starts kube-apiserver ([`stop_apiserver`](Self::stop_apiserver),
    /// [`start_apiserver`](Self::start_apiserver)).
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        self.stop_apiserver();
        self.start_apiserver().await
    }

    /// etcd's current revision (every write through the API, or into etcd, moves it).
    pub async fn etcd_revision(&self) -> Result<i64> {
        let answer = self.etcd_call("/v3/kv/range", &serde_json::json!({"key": b64("/"), "limit": 1})).await?;
        revision_of(&answer).ok_or_else(|| etcd_error(format!("no revision in {answer}")))
    }

    /// Writes one value straight into etcd, under the API server's key
    /// (`/registry/services/specs/NS/NAME`): an object the API would refuse,
    /// or a change made behind a stopped API server. Storage is JSON
    /// (`--storage-media-type=application/json`), so `value` is the object as JSON.
    pub async fn etcd_put(&self, key: &str, value: &serde_json::Value) -> Result<i64> {
        let body = serde_json::json!({"key": b64(key), "value": b64(&value.to_string())});
        let answer = self.etcd_call("/v3/kv/put", &body).await?;
        revision_of(&answer).ok_or_else(|| etcd_error(format!("no revision in {answer}")))
    }

    /// [`etcd_put`](Self::etcd_put) for many objects, in transactions of 100
    /// puts (etcd's `--max-txn-ops` default is 128): ten thousand Services
    /// in about a hundred requests instead of one each.
    pub async fn etcd_put_many(&self, entries: &[(String, serde_json::Value)]) -> Result<i64> {
        let mut revision = 0;
        for chunk in entries.chunks(100) {
            let ops: Vec<serde_json::Value> = chunk
                .iter()
                .map(|(k, v)| serde_json::json!({"requestPut": {"key": b64(k), "value": b64(&v.to_string())}}))
                .collect();
            let answer = self.etcd_call("/v3/kv/txn", &serde_json::json!({"success": ops})).await?;
            revision = revision_of(&answer).ok_or_else(|| etcd_error(format!("no revision in {answer}")))?;
        }
        Ok(revision)
    }

    /// Deletes one key straight from etcd; returns how many keys went.
    pub async fn etcd_delete(&self, key: &str) -> Result<u64> {
        let answer = self.etcd_call("/v3/kv/deleterange", &serde_json::json!({"key": b64(key)})).await?;
        Ok(answer.get("deleted").and_then(|d| d.as_str().and_then(|s| s.parse().ok()).or(d.as_u64())).unwrap_or(0))
    }

    /// Compacts etcd's history up to its current revision: a watch that
    /// resumes from an older resourceVersion then gets `410 Gone`.
    pub async fn etcd_compact(&self) -> Result<i64> {
        let revision = self.etcd_revision().await?;
        self.etcd_call("/v3/kv/compaction", &serde_json::json!({"revision": revision, "physical": true})).await?;
        info!(revision, "etcd compacted");
        Ok(revision)
    }

    /// A call to etcd's JSON gateway (`/v3/...`, plain HTTP on the bind address).
    async fn etcd_call(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let addr = self.etcd_url.trim_start_matches("http://").to_string();
        let (code, text) = plain_request(&addr, "POST", path, Some(&body.to_string()))
            .await
            .map_err(|e| etcd_error(format!("POST {path}: {e}")))?;
        if code != 200 {
            return Err(etcd_error(format!("POST {path}: {code} {}", text.trim())));
        }
        serde_json::from_str(&text).map_err(|e| etcd_error(format!("POST {path}: {e}: {text}")))
    }

    /// The last lines of both logs (for a failing test's message).
    pub fn log_tails(&self) -> String {
        format!(
            "--- etcd.log\n{}\n--- kube-apiserver.log\n{}",
            tail(&self.dir.join("etcd.log")),
            tail(&self.dir.join("kube-apiserver.log"))
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The API server first, so it does not log etcd's disappearance.
        if let Some(child) = self.apiserver.as_mut() {
            kill(child);
        }
        kill(&mut self.etcd);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn etcd_error(message: String) -> ConformanceError {
    ConformanceError::ControlPlane { component: "etcd", message }
}

/// etcd's JSON gateway takes keys and values as base64.
fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// `header.revision` of a gateway answer (int64 fields are JSON strings there).
fn revision_of(answer: &serde_json::Value) -> Option<i64> {
    let r = answer.pointer("/header/revision")?;
    r.as_str().and_then(|s| s.parse().ok()).or_else(|| r.as_i64())
}

/// Waits until kube-apiserver's `/readyz` answers ok (see [`wait_ready`]).
async fn wait_apiserver_ready(admin: &kube::Client, child: &mut Child, log: &Path) -> Result<()> {
    wait_ready("kube-apiserver", child, log, || {
        let client = admin.clone();
        async move {
            let req = http::Request::get("/readyz?verbose").body(Vec::new()).map_err(|e| e.to_string())?;
            match client.request_text(req).await {
                Ok(_) => Ok(()),
                // The failing checks: their set shrinking is progress.
                Err(kube::Error::Api(status)) => Err(failing_checks(&status.message)),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

/// Kills what a failed start left running and removes its directory.
struct Cleanup {
    dir: Option<PathBuf>,
    etcd: Option<Child>,
    apiserver: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in [self.apiserver.as_mut(), self.etcd.as_mut()].into_iter().flatten() {
            kill(child);
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// SIGKILL by pid (a child of ours, never reaped before), then reap it.
fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn io_err(operation: String) -> impl FnOnce(std::io::Error) -> ConformanceError {
    move |source| ConformanceError::ControlPlaneIo { operation, source }
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

fn free_port(bind: IpAddr) -> Result<u16> {
    std::net::TcpListener::bind((bind, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io_err(format!("finding a free port on {bind}")))
}

fn spawn(cmd: Command, log: &Path, component: &'static str) -> Result<Child> {
    let out = std::fs::File::create(log).map_err(io_err(format!("creating {}", log.display())))?;
    spawn_to(cmd, out, log, component)
}

fn spawn_appending(cmd: Command, log: &Path, component: &'static str) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .map_err(io_err(format!("opening {}", log.display())))?;
    spawn_to(cmd, out, log, component)
}

fn spawn_to(mut cmd: Command, out: std::fs::File, log: &Path, component: &'static str) -> Result<Child> {
    let err = out.try_clone().map_err(io_err(format!("opening {}", log.display())))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of the new process;
    // it allocates nothing and is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().map_err(io_err(format!("starting {component} ({:?})", cmd.get_program())))
}

/// Waits until `check` passes while `child` runs. Progress (the log growing,
/// or `check`'s answer changing) extends the wait; a minute without any
/// (scaled by the patience) fails, as does the process exiting.
async fn wait_ready<F, Fut>(component: &'static str, child: &mut Child, log: &Path, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), String>>,
{
    let stall_bound = scaled(Duration::from_secs(60));
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_seen: (u64, String) = (0, String::new());
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let message = format!("exited ({status}) before it was ready; its log ends with:\n{}", tail(log));
            return Err(ConformanceError::ControlPlane { component, message });
        }
        let answer = check().await;
        let state = match answer {
            Ok(()) => {
                debug!(component, elapsed = ?started.elapsed(), "ready");
                return Ok(());
            }
            Err(state) => state,
        };
        let seen = (std::fs::metadata(log).map(|m| m.len()).unwrap_or(0), state);
        if seen != last_seen {
            last_seen = seen;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > stall_bound {
            let message = format!(
                "not ready after {:?} and no progress for {stall_bound:?}; last answer: {}; its log ends with:\n{}",
                started.elapsed(),
                last_seen.1,
                tail(log)
            );
            return Err(ConformanceError::ControlPlane { component, message });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The failing checks of a verbose `/readyz` answer (`[-]etcd failed: ...`).
fn failing_checks(body: &str) -> String {
    let failing: Vec<&str> = body.lines().filter(|l| l.starts_with("[-]")).map(str::trim).collect();
    if failing.is_empty() { body.trim().to_string() } else { failing.join(", ") }
}

/// A plain HTTP/1.1 GET (etcd's health endpoint; no TLS on the lab's loopback).
async fn plain_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    plain_request(addr, "GET", path, None).await
}

/// A plain HTTP/1.1 request to etcd (its health endpoint and JSON gateway).
async fn plain_request(addr: &str, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
    // etcd's gateway answers large results chunked.
    Ok(crate::relay::parse_response(&raw))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

async fn client_from(kubeconfig: &Path) -> Result<kube::Client> {
    let bad = |e: &dyn std::fmt::Display| ConformanceError::ControlPlane {
        component: "kubeconfig",
        message: format!("{}: {e}", kubeconfig.display()),
    };
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| bad(&e))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| bad(&e))?;
    kube::Client::try_from(config).map_err(|source| ConformanceError::Api {
        operation: format!("a client from {}", kubeconfig.display()),
        source,
    })
}

/// Issues a client certificate and writes a kubeconfig using it.
fn write_client_kubeconfig(
    authority: &Authority,
    dir: &Path,
    server: &str,
    ca: &Path,
    file: &str,
    user: &str,
    group: Option<&str>,
) -> Result<PathBuf> {
    let (cert, key) = authority.issue(file, user, group, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
    let (cert_path, key_path) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
    std::fs::write(&cert_path, cert).map_err(io_err(format!("writing {}", cert_path.display())))?;
    std::fs::write(&key_path, key).map_err(io_err(format!("writing {}", key_path.display())))?;
    let auth = serde_json::json!({ "client-certificate": cert_path, "client-key": key_path });
    write_kubeconfig(&dir.join(format!("{file}.kubeconfig")), server, ca, user, auth)
}

/// A kubeconfig (JSON, which every YAML reader takes) with one cluster, user and context.
fn write_kubeconfig(path: &Path, server: &str, ca: &Path, user: &str, auth: serde_json::Value) -> Result<PathBuf> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": auth}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}],
        "current-context": "lab",
    });
    std::fs::write(path, config.to_string()).map_err(io_err(format!("writing {}", path.display())))?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_version_is_the_one_reference_go_mod_requires() {
        // Read at compile time: the VM runs this test without the source tree.
        let go_mod = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../reference/go.mod"));
        let line = go_mod
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == "k8s.io/kubernetes"))
            .expect("a k8s.io/kubernetes requirement");
        assert!(line.split_whitespace().any(|w| w == REFERENCE_VERSION), "{line} vs {REFERENCE_VERSION}");
    }

    #[test]
    fn the_default_ranges_cover_the_lab() {
        let c = ControlPlaneConfig::default();
        assert_eq!(c.service_cidrs.len(), 2, "both families' Service CIDRs parse");
        assert!(c.node_port_range.contains(&30016) && c.node_port_range.contains(&32034));
    }

    #[test]
    fn failing_readyz_checks_are_summarised() {
        let body = "[+]ping ok\n[-]etcd failed: reason withheld\n[+]log ok\n[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\nreadyz check failed";
        assert_eq!(
            failing_checks(body),
            "[-]etcd failed: reason withheld, [-]poststarthook/rbac/bootstrap-roles failed: reason withheld"
        );
    }

    #[test]
    fn missing_binaries_name_the_command_that_builds_them() {
        let e = ConformanceError::ReferenceMissing { path: "/nowhere/etcd".into() };
        assert!(e.to_string().contains("./x reference"), "{e}");
    }
}
