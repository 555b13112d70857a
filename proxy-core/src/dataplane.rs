//! The contract between the core and a backend: the [`Dataplane`] trait.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::ServiceName;
use crate::plan::ProgrammedState;
use crate::snapshot::Snapshot;

/// A boxed error from a backend's own error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a backend is asked to program.
#[derive(Clone, Debug)]
pub struct SyncRequest {
    /// The complete desired state.
    pub snapshot: Arc<Snapshot>,
    /// Services whose plan changed (or that disappeared) since the last
    /// successful sync. Only a hint for partial work: a backend may always
    /// do a full sync instead.
    pub changed: Arc<BTreeSet<ServiceName>>,
    /// Reconcile everything: first sync, periodic resync, after a failure,
    /// or when something beyond single Services changed. A full sync takes
    /// the kernel as witness: it reads back what this backend owns (cheaply:
    /// hashes, counts, attachment ids where it can), repairs whatever differs
    /// from the plans, whoever changed it, and reports what it repaired in
    /// [`SyncOutcome::repairs`]. The runner asks for one every sync period.
    pub full: bool,
}

/// What a backend reports after a successful sync.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncOutcome {
    /// Whether the backend reconciled everything (it may upgrade a partial sync).
    pub full: bool,
    /// Counts of kernel objects it owns after the sync, by kind (`nat rules`,
    /// `virtual servers`, `service map entries`, ...), for metrics and logs.
    pub objects: BTreeMap<String, u64>,
    /// Drift found in the kernel and repaired by this sync, by kind
    /// (`chain`, `hook jump`, `tc link`, `virtual server`, ...): objects of
    /// ours that someone else deleted or changed, not changes of the plans.
    /// The proxier logs them and counts `switchyard_drift_repairs_total{backend,kind}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub repairs: BTreeMap<String, u64>,
}

impl SyncOutcome {
    /// Records `n` repaired objects of `kind`.
    pub fn repaired(&mut self, kind: impl Into<String>, n: u64) {
        if n > 0 {
            *self.repairs.entry(kind.into()).or_insert(0) += n;
        }
    }
}

/// Errors crossing the [`Dataplane`] boundary. Backends keep their own
/// structured error enums and box them into `source`.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The node cannot run this mode (missing binary, kernel feature, module).
    #[error("proxy mode {mode} is not available on this node: {reason}")]
    Unavailable { mode: String, reason: String },
    /// A kernel or tool operation failed; the previous state stays in place.
    #[error("{mode}: {operation} failed")]
    Failed {
        mode: String,
        operation: String,
        #[source]
        source: BoxError,
    },
    /// A kernel table is full (a BPF map, the IPVS table).
    #[error("{mode}: {what} is full ({capacity} entries); raise its size in the configuration")]
    Full { mode: String, what: String, capacity: u64 },
    /// The backend's configuration section is invalid.
    #[error("{mode}: invalid configuration: {problems:?}")]
    Config { mode: String, problems: Vec<String> },
}

impl DataplaneError {
    pub fn failed(
        mode: impl Into<String>,
        operation: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> DataplaneError {
        DataplaneError::Failed { mode: mode.into(), operation: operation.into(), source: source.into() }
    }

    pub fn unavailable(mode: impl Into<String>, reason: impl Into<String>) -> DataplaneError {
        DataplaneError::Unavailable { mode: mode.into(), reason: reason.into() }
    }
}

/// Declares [`Capability`] and [`Capability::ALL`] from one list, so that
/// `ALL` (and [`Capabilities::all`]) can never miss a variant.
macro_rules! capabilities {
    ($(#[$meta:meta])* pub enum Capability { $($(#[$vmeta:meta])* $variant:ident,)* }) => {
        $(#[$meta])*
        pub enum Capability { $($(#[$vmeta])* $variant,)* }

        impl Capability {
            /// Every capability, in declaration order.
            pub const ALL: &'static [Capability] = &[$(Capability::$variant,)*];
        }
    };
}

capabilities! {
    /// Optional semantics a backend may implement. A conformance scenario that
    /// needs a capability the backend lacks is reported unsupported, never passed.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
    pub enum Capability {
        Tcp,
        Udp,
        Sctp,
        IPv4,
        IPv6,
        ClusterIP,
        NodePort,
        ExternalIPs,
        LoadBalancerIPs,
        /// sessionAffinity ClientIP with its timeout.
        SessionAffinity,
        ExternalTrafficPolicyLocal,
        InternalTrafficPolicyLocal,
        /// loadBalancerSourceRanges.
        SourceRanges,
        /// "Connection refused" at once for a Service without endpoints.
        Reject,
        /// SNAT per the plan (off-cluster sources, externalTrafficPolicy Cluster, --masquerade-all).
        Masquerade,
        /// A pod reaching itself through its Service.
        Hairpin,
        /// Stale UDP conntrack entries removed when an endpoint goes away.
        StaleUdpConntrack,
        /// Connections made by processes on the node (host network) are balanced.
        HostNetworkClients,
        /// externalTrafficPolicy Local: pods and the node reaching an external
        /// frontend use every endpoint of the cluster (kube-proxy's short-circuit),
        /// not only this node's. A dataplane that picks endpoints by destination
        /// alone (IPVS) cannot.
        ExternalTrafficPolicyLocalFromCluster,
        /// sessionAffinity ClientIP timeouts below two minutes end on time. IPVS
        /// persistence cannot: a template outlives its connections, which stay
        /// 120 s in TIME_WAIT.
        ShortAffinityTimeouts,
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The set of capabilities a backend declares.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities(pub BTreeSet<Capability>);

impl Capabilities {
    pub fn new(caps: impl IntoIterator<Item = Capability>) -> Self {
        Capabilities(caps.into_iter().collect())
    }

    /// Every capability there is.
    pub fn all() -> Self {
        Capabilities::new(Capability::ALL.iter().copied())
    }

    pub fn has(&self, cap: Capability) -> bool {
        self.0.contains(&cap)
    }

    /// The capabilities of `needed` this set lacks.
    pub fn missing<'a>(&'a self, needed: impl IntoIterator<Item = &'a Capability>) -> Vec<Capability> {
        needed.into_iter().filter(|c| !self.has(**c)).copied().collect()
    }
}

/// Whether a backend can program the kernel right now, and whether what it
/// programmed still works. An out-of-process plugin is down while its
/// process is being restarted or its socket reconnected; an in-process
/// backend is down while it knows its datapath is broken and could not
/// repair it (eBPF programs detached and not re-attachable, say).
/// `/healthz` fails while down.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataplaneHealth {
    #[default]
    Up,
    Down {
        reason: String,
    },
}

impl DataplaneHealth {
    pub fn is_up(&self) -> bool {
        matches!(self, DataplaneHealth::Up)
    }
}

/// A dataplane: renders plans into kernel objects and reads them back.
///
/// Implementations own their kernel objects exclusively (named with our
/// prefix), run blocking work off the async executor, and are safe to call
/// from several tasks (`inspect` may run while a `sync` is in flight).
#[async_trait]
pub trait Dataplane: Send + Sync + fmt::Debug {
    /// The `--proxy-mode` name.
    fn mode(&self) -> &str;

    /// Which optional semantics this backend implements.
    fn capabilities(&self) -> Capabilities;

    /// Makes the kernel objects this backend owns match the snapshot's plans
    /// exactly. Idempotent; converges from any prior state (a crashed run,
    /// another version, another mode's leftovers); never touches objects it
    /// does not own. On error the previous state stays in place.
    async fn sync(&self, request: SyncRequest) -> Result<SyncOutcome, DataplaneError>;

    /// Reads the kernel (never the backend's memory) into a backend-neutral state.
    async fn inspect(&self) -> Result<ProgrammedState, DataplaneError>;

    /// Removes everything this backend ever installs. Succeeds when there is
    /// nothing to remove; works from a fresh process.
    async fn cleanup(&self) -> Result<(), DataplaneError>;

    /// Whether the backend can program the kernel right now (cheap; called
    /// on every `/healthz`). The default is always up.
    fn health(&self) -> DataplaneHealth {
        DataplaneHealth::Up
    }

    /// What this backend, as configured, does not do that an operator would
    /// expect it to, in words (each naming the traffic that is not served
    /// and the setting that would change it). Logged at start by the
    /// backend and printed by `switchyard inspect`. The default is none.
    fn limitations(&self) -> Vec<String> {
        Vec::new()
    }
}
