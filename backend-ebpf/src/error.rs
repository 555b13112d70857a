//! The backend's error type.

use std::path::PathBuf;

use proxy_core::DataplaneError;

use crate::MODE;

/// Errors of the eBPF backend, with the object they concern.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the eBPF object failed")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("program {name} could not be loaded")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching to {target} failed")]
    Attach {
        target: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning {path} failed")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {map}: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("map {map} is full ({capacity} entries); raise ebpf.mapSizes")]
    Full { map: &'static str, capacity: u64 },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl EbpfError {
    pub(crate) fn map(map: &'static str, op: &'static str, e: aya::maps::MapError) -> EbpfError {
        EbpfError::Map { map, op, source: Box::new(e) }
    }

    pub(crate) fn program(name: &'static str, e: aya::programs::ProgramError) -> EbpfError {
        EbpfError::Program { name, source: Box::new(e) }
    }

    pub(crate) fn attach(target: &str, e: aya::programs::ProgramError) -> EbpfError {
        EbpfError::Attach { target: target.to_string(), source: Box::new(e) }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> EbpfError {
        EbpfError::Io { what: what.into(), source }
    }

    pub(crate) fn into_dataplane(self, operation: &str) -> DataplaneError {
        match self {
            EbpfError::Full { map, capacity } => {
                DataplaneError::Full { mode: MODE.into(), what: format!("BPF map {map}"), capacity }
            }
            other => DataplaneError::failed(MODE, operation, other),
        }
    }
}
