//! switchyard's core: the Service model, change tracking, planning, the sync
//! runner and the [`Dataplane`] trait every backend implements.
//!
//! The flow, from the API server to the kernel:
//!
//! ```text
//! ProxyEvent ──► ChangeTracker ──► SyncRunner ──► Planner ──► Dataplane::sync
//! (k8s objects)  (coalesce per      (min/max        (plans per   (render into
//!                 key, init gate)    interval,       Service port  the kernel)
//!                                    retries)        and family)
//! ```
//!
//! - [`tracker::ChangeTracker`] converts objects ([`convert`]) into the
//!   [`model`] and keeps what changed since the last successful sync.
//! - [`planner`] decides Service semantics once: endpoint sets per traffic
//!   class after traffic policies, topology hints and the terminating
//!   fallback; reject or drop when empty. Its output is a [`plan`].
//! - [`runner::SyncRunner`] bounds sync frequency; [`proxier::Proxier`] glues
//!   tracker, runner and a [`Dataplane`] together with [`health`] and [`metrics`].
//! - Backends implement [`Dataplane`] and are found through a [`Registry`].

// Libraries log through tracing; only binaries print.
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod blocking;
#[cfg(feature = "conntrack")]
pub mod conntrack;
pub mod contest;
pub mod convert;
pub mod dataplane;
pub mod duration;
pub mod flows;
pub mod health;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod plan;
pub mod planner;
pub mod proxier;
pub mod registry;
pub mod runner;
pub mod snapshot;
pub mod stale;
pub mod testing;
pub mod tracker;

pub use blocking::KernelWorker;
pub use dataplane::{
    BoxError, Capabilities, Capability, Dataplane, DataplaneError, DataplaneHealth, SyncOutcome, SyncRequest,
};
pub use duration::{DurationError, GoDuration};
pub use flows::{ClassFlow, FlowTable, FrontendFlows, MasqueradeSet, RouteId};
pub use model::*;
pub use netns::NetNamespace;
pub use plan::*;
pub use planner::{PlannerConfig, ServiceEndpoints};
pub use proxier::{ErrorChain, Proxier, SyncedState};
pub use registry::{BackendContext, BackendFactory, NodePortAddresses, Registry, RegistryError};
pub use runner::{SyncResult, SyncRunner, SyncRunnerConfig, SyncTrigger};
pub use snapshot::Snapshot;
pub use tracker::{ChangeTracker, ProxyEvent, ResourceEvent, SyncBatch, TrackerConfig};
