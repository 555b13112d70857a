//! The netlink layer: nf_tables messages built and read by hand (see
//! [`wire`] for why), sent over a plain netlink socket.

pub mod nft;
pub mod socket;
pub mod wire;

pub use nft::{Batch, Elem, ElemData, Expr, Hook, HookNum, SetData, SetSpec, Verdict};
pub use socket::{Conn, NlError};

#[cfg(test)]
mod tests;
