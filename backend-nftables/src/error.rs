//! The crate's error type.

use std::io;

use crate::netlink::NlError;

/// Everything that can go wrong in this backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink operation on nf_tables failed.
    #[error("nf_tables {operation} failed")]
    Netlink {
        operation: String,
        #[source]
        source: NlError,
    },
    /// The backend's network namespace could not be entered.
    #[error("cannot enter network namespace {netns}")]
    Namespace {
        netns: String,
        #[source]
        source: io::Error,
    },
    /// The backend's configuration section is invalid.
    #[error("invalid nftables configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// Stale UDP conntrack entries could not be removed.
    #[error("conntrack cleanup failed")]
    Conntrack(#[source] proxy_core::conntrack::ConntrackError),
}
