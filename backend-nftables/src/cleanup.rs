//! Removing everything this backend installs: our table in both families
//! (`nft delete table ip switchyard; nft delete table ip6 switchyard`).
//! Nothing else is ever ours.
//!
//! [`delete_table`] also removes another program's table by name: the
//! daemon uses it for kube-proxy's `kube-proxy` tables when a node moves to
//! switchyard.

use proxy_core::IpFamily;

use crate::client::{Kernel, Transaction};
use crate::error::Error;
use crate::netlink::nft::Batch;
use crate::render::{TABLE, nfproto};

/// Deletes our tables; succeeds when there is nothing to delete.
pub fn cleanup(kernel: &dyn Kernel) -> Result<(), Error> {
    for family in [IpFamily::V4, IpFamily::V6] {
        delete_table(kernel, family, TABLE)?;
    }
    Ok(())
}

/// `nft delete table <family> <name>`, with everything in it; succeeds when
/// there is no such table.
pub fn delete_table(kernel: &dyn Kernel, family: IpFamily, name: &str) -> Result<(), Error> {
    let mut b = Batch::new(nfproto(family), 1);
    // Adding first makes the delete succeed on a node without the table (an
    // add without NLM_F_EXCL leaves an existing table as it is).
    b.add_table(name);
    b.del_table(name);
    kernel.apply(&Transaction::from_batch(b))
}
