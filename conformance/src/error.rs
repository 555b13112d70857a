//! The conformance crate's error type.

use std::path::PathBuf;

use proxy_core::{DataplaneError, RegistryError};

/// Everything that can go wrong building a lab or running scenarios. A
/// scenario that *fails* is not an error: it is a result with evidence.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    #[error("reading scenario file {path}")]
    ReadScenario {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario file {path}: {message}")]
    InvalidScenario { path: PathBuf, message: String },
    #[error("lab: `{command}` failed: {message}")]
    LabCommand { command: String, message: String },
    #[error("lab: {operation}")]
    Lab {
        operation: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lab agent {host}: {message}")]
    Agent { host: String, message: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("backend {backend}: {operation}")]
    Backend {
        backend: String,
        operation: String,
        #[source]
        source: DataplaneError,
    },
    #[error("driver {driver}: {message}")]
    Driver { driver: String, message: String },
    #[error("writing report {path}")]
    WriteReport {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "reference binary {path} is missing: build the references with `./x reference` \
         (or point SWITCHYARD_REFERENCE_BIN at a directory holding etcd, kube-apiserver and kube-proxy)"
    )]
    ReferenceMissing { path: PathBuf },
    #[error("control plane: {component} {message}")]
    ControlPlane { component: &'static str, message: String },
    #[error("control plane: {operation}")]
    ControlPlaneIo {
        operation: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control plane: generating the {what} certificate")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("control plane: {operation}")]
    Api {
        operation: String,
        #[source]
        source: kube::Error,
    },
    #[error("the lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); running as uid {uid}")]
    NotRoot { uid: u32 },
}

pub type Result<T, E = ConformanceError> = std::result::Result<T, E>;
