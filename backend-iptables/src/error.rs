//! The crate's error type.

use std::io;

use crate::parse::ParseError;

/// Everything that can go wrong in this backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be started (missing binary, namespace gone).
    #[error("could not run {program} in network namespace {netns}")]
    Spawn {
        program: String,
        netns: String,
        #[source]
        source: io::Error,
    },
    /// A program ran and failed.
    #[error("{program} failed ({status}): {detail}")]
    Command { program: String, status: String, detail: String },
    /// `iptables-save` printed something we cannot read.
    #[error("cannot read iptables-save output of the {table} table")]
    Parse {
        table: String,
        #[source]
        source: ParseError,
    },
    /// The backend's configuration section is invalid.
    #[error("invalid iptables configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// A conntrack netlink operation failed.
    #[error(transparent)]
    Conntrack(#[from] proxy_core::conntrack::ConntrackError),
    /// A sysctl could not be set, or restored on cleanup.
    #[error(transparent)]
    Sysctl(#[from] crate::sysctl::SysctlError),
    /// The packet tracer met a rule it cannot evaluate.
    #[error("cannot trace chain {chain}: {reason}")]
    Trace { chain: String, reason: String },
}
