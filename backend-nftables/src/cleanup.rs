//! Removing everything this backend installs: our table in both families
//! (`nft delete table ip switchyard; nft delete table ip6 switchyard`).
//! Nothing else is ever ours.

use proxy_core::IpFamily;

use crate::client::{Kernel, Transaction};
use crate::error::Error;
use crate::netlink::nft::Batch;
use crate::render::{TABLE, nfproto};

/// Deletes our tables; succeeds when there is nothing to delete.
pub fn cleanup(kernel: &dyn Kernel) -> Result<(), Error> {
    for family in [IpFamily::V4, IpFamily::V6] {
        let mut b = Batch::new(nfproto(family), 1);
        // Adding first makes the delete succeed on a node without the table.
        b.add_table(TABLE);
        b.del_table(TABLE);
        kernel.apply(&Transaction::from_batch(b))?;
    }
    Ok(())
}
