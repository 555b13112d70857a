//! healthCheckNodePort servers for Services with externalTrafficPolicy Local.
//!
//! Cloud load balancers probe `http://<node>:<healthCheckNodePort>/` to
//! learn which nodes have local endpoints. As kube-proxy's
//! `pkg/proxy/healthcheck/service_health.go`, each server answers any path
//! with 200 when the Service has ready endpoints on this node (and the proxy
//! itself is healthy), 503 otherwise, an `X-Load-Balancing-Endpoint-Weight`
//! header with the count, and the JSON body
//! `{"service": {"namespace", "name"}, "localEndpoints": N, "serviceProxyHealthy": bool}`.
//!
//! Servers follow the *programmed* state: they are opened, updated and
//! closed after each successful sync. They bind inside the namespace the
//! proxy programs (the process's own unless `--netns` says otherwise), on
//! the node addresses `--nodeport-addresses` selects (every address when unset).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use proxy_core::health::ProxyHealth;
use proxy_core::{FamilySet, NetNamespace, NodePortAddresses, ServiceName, Snapshot, SyncedState};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

/// What one healthCheckNodePort reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckEntry {
    pub service: ServiceName,
    pub local_endpoints: usize,
}

/// The healthCheckNodePorts a snapshot asks for.
pub fn wanted(snapshot: &Snapshot) -> BTreeMap<u16, HealthCheckEntry> {
    let mut out: BTreeMap<u16, HealthCheckEntry> = BTreeMap::new();
    for plan in snapshot.health_check_port_plans() {
        let Some(port) = plan.health_check_node_port else { continue };
        let e = out
            .entry(port)
            .or_insert_with(|| HealthCheckEntry { service: plan.name.service.clone(), local_endpoints: 0 });
        e.local_endpoints = e.local_endpoints.max(plan.local_ready_endpoints);
    }
    out
}

type Table = Arc<RwLock<HashMap<u16, HealthCheckEntry>>>;

/// Runs the servers.
pub struct HealthCheckServers {
    netns: NetNamespace,
    families: FamilySet,
    /// As kube-proxy: servers listen on the node addresses `--nodeport-addresses` selects.
    addresses: NodePortAddresses,
    node_ips: Vec<IpAddr>,
    health: ProxyHealth,
    table: Table,
    running: HashMap<u16, oneshot::Sender<()>>,
}

impl std::fmt::Debug for HealthCheckServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheckServers").field("ports", &self.running.keys().collect::<Vec<_>>()).finish()
    }
}

#[derive(Clone)]
struct PortState {
    port: u16,
    table: Table,
    health: ProxyHealth,
}

impl HealthCheckServers {
    pub fn new(
        netns: NetNamespace,
        families: FamilySet,
        addresses: NodePortAddresses,
        node_ips: Vec<IpAddr>,
        health: ProxyHealth,
    ) -> Self {
        HealthCheckServers {
            netns,
            families,
            addresses,
            node_ips,
            health,
            table: Table::default(),
            running: HashMap::new(),
        }
    }

    /// The ports currently served.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.running.keys().copied().collect();
        p.sort_unstable();
        p
    }

    /// Opens, updates and closes servers to match `snapshot`.
    pub async fn update(&mut self, snapshot: &Snapshot) {
        let wanted = wanted(snapshot);
        {
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            table.clear();
            table.extend(wanted.iter().map(|(p, e)| (*p, e.clone())));
        }
        let gone: Vec<u16> = self.running.keys().filter(|p| !wanted.contains_key(p)).copied().collect();
        for port in gone {
            if let Some(stop) = self.running.remove(&port) {
                let _ = stop.send(());
                info!(port, "closed healthCheckNodePort server");
            }
        }
        for (port, entry) in &wanted {
            if self.running.contains_key(port) {
                continue;
            }
            match self.bind(*port).await {
                Ok(listeners) => {
                    let (stop_tx, stop_rx) = oneshot::channel::<()>();
                    let stop = futures::future::FutureExt::shared(async move {
                        let _ = stop_rx.await;
                    });
                    let state = PortState { port: *port, table: self.table.clone(), health: self.health.clone() };
                    for l in listeners {
                        let router = Router::new().fallback(answer).with_state(state.clone());
                        let stop = stop.clone();
                        tokio::spawn(async move {
                            let _ = axum::serve(l, router).with_graceful_shutdown(stop).await;
                        });
                    }
                    self.running.insert(*port, stop_tx);
                    info!(port, service = %entry.service, "opened healthCheckNodePort server");
                }
                // Retried after the next sync; another process may hold the port.
                Err(e) => warn!(port, service = %entry.service, error = %e, "cannot open healthCheckNodePort server"),
            }
        }
    }

    async fn bind(&self, port: u16) -> std::io::Result<Vec<tokio::net::TcpListener>> {
        let ns = self.netns.clone();
        let families = self.families;
        let selection = self.addresses.clone();
        let node_ips = self.node_ips.clone();
        let std_listeners = ns
            .run_async(move || -> std::io::Result<Vec<std::net::TcpListener>> {
                let ips = listen_ips(&selection, families, &node_ips)?;
                if ips.is_empty() {
                    return Err(std::io::Error::other("no local address matches --nodeport-addresses"));
                }
                ips.into_iter().map(|ip| bind_one(SocketAddr::new(ip, port))).collect()
            })
            .await??;
        std_listeners
            .into_iter()
            .map(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            })
            .collect()
    }

    /// Follows successful syncs until `shutdown`.
    pub async fn run(
        mut self,
        mut synced: watch::Receiver<SyncedState>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let snapshot = synced.borrow_and_update().snapshot.clone();
            if let Some(s) = snapshot {
                self.update(&s).await;
            }
            tokio::select! {
                _ = &mut shutdown => break,
                r = synced.changed() => if r.is_err() { break },
            }
        }
        for (_, stop) in self.running.drain() {
            let _ = stop.send(());
        }
        debug!("healthCheckNodePort servers stopped");
    }
}

/// The addresses to listen on, read inside the namespace.
fn listen_ips(selection: &NodePortAddresses, families: FamilySet, node_ips: &[IpAddr]) -> std::io::Result<Vec<IpAddr>> {
    let served = |ip: &IpAddr| if ip.is_ipv4() { families.ipv4 } else { families.ipv6 };
    Ok(match selection {
        NodePortAddresses::All => {
            let mut v = Vec::new();
            if families.ipv4 {
                v.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            }
            if families.ipv6 {
                v.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
            }
            v
        }
        NodePortAddresses::Primary => node_ips.iter().filter(|ip| served(ip)).copied().collect(),
        NodePortAddresses::Cidrs(cidrs) => {
            let mut v: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
                .map_err(std::io::Error::from)?
                .filter_map(|ifa| ifa.address)
                .filter_map(|a| {
                    a.as_sockaddr_in()
                        .map(|s| IpAddr::V4(s.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
                })
                .filter(|ip| served(ip) && cidrs.iter().any(|c| c.contains(ip)))
                .collect();
            v.sort();
            v.dedup();
            v
        }
    })
}

/// Binds with SO_REUSEADDR, and IPv6 sockets v6-only so that both families can share a port.
fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket, sockopt,
    };
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(addr))?;
    listen(&fd, nix::sys::socket::Backlog::new(128).unwrap_or(nix::sys::socket::Backlog::MAXCONN))?;
    Ok(std::net::TcpListener::from(fd))
}

async fn answer(State(state): State<PortState>) -> Response {
    let entry = state.table.read().unwrap_or_else(|e| e.into_inner()).get(&state.port).cloned();
    let Some(entry) = entry else {
        // Closing: kube-proxy answers nothing useful for a closed healthcheck either.
        return (StatusCode::SERVICE_UNAVAILABLE, "").into_response();
    };
    // As kube-proxy: the proxy's own health; a node that is leaving (deleted,
    // tainted by the cluster autoscaler) fails /healthz, not these ports,
    // which answer for the Service's local endpoints.
    let healthy = state.health.status(Instant::now()).proxy_healthy;
    let code = if entry.local_endpoints > 0 && healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "service": {"namespace": &*entry.service.namespace, "name": &*entry.service.name},
        "localEndpoints": entry.local_endpoints,
        "serviceProxyHealthy": healthy,
    });
    let mut r = (code, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&entry.local_endpoints.to_string()) {
        h.insert("x-load-balancing-endpoint-weight", v);
    }
    r
}
