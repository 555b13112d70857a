//! Whether this node can run the nftables mode: nf_tables answers on
//! netlink in the backend's namespace (kernel >= 5.13 for every expression
//! used here, as kube-proxy's nftables mode). Changes nothing.

use proxy_core::NetNamespace;

use crate::client::{Kernel, SystemKernel};
use crate::error::Error;

/// Reads the ruleset generation: fails when nf_tables is missing.
pub fn probe(netns: &NetNamespace) -> Result<(), Error> {
    SystemKernel::new(netns.clone()).generation().map(|_| ())
}
