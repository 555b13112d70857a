//! `cleanup()`: removes our virtual servers, switchyard0 and the helper rules,
//! and puts back the sysctls we changed.
//!
//! Works from a fresh process: ownership is read from the kernel (VIPs on
//! switchyard0, node addresses with a port in the NodePort range). Run it on
//! a thread inside the node namespace.

use proxy_core::{IpFamily, NetNamespace};

use crate::IpvsError;
use crate::client::{ClientError, Ipvs, NetlinkIpvs};
use crate::link;
use crate::message::Request;
use crate::rules;

pub fn cleanup_blocking(node_port_range: (u16, u16)) -> Result<(), IpvsError> {
    let owner = crate::inspect::kernel_ownership(node_port_range)?;
    match NetlinkIpvs::connect() {
        Ok(mut client) => {
            let ours: Vec<Request> = client
                .services()?
                .into_iter()
                .filter(|vs| owner.owns(&vs.key))
                .map(|vs| Request::DelService(vs.key))
                .collect();
            client.execute(&ours)?;
        }
        // No IPVS: no virtual servers of ours either.
        Err(ClientError::Unavailable) => {}
        Err(e) => return Err(e.into()),
    }
    link::with_handle(async |h| link::delete_dummy(&h).await)?;
    rules::cleanup(&NetNamespace::current(), &IpFamily::ALL)?;
    // The sysctls we changed go back to the values found before.
    crate::sysctl::restore()?;
    Ok(())
}
