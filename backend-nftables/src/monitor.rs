//! Watching nf_tables for changes to our table (`nft monitor`): the
//! `NFNLGRP_NFTABLES` multicast group reports every object a transaction
//! adds or deletes, then `NEWGEN` with the new generation, the process that
//! committed it and, as the message's sender, the netlink port of the
//! socket it was committed through. A transaction that touched our table
//! and did not come through our own socket is a change by someone else:
//! the dataplane repairs it at once.
//!
//! (Telling our commits by generation instead, "the generation read after
//! our last commit", took every transaction but the last of a sync that
//! commits one per family for someone else's, and the repair that followed
//! rewrote the table and wiped the affinity entries.)

use std::io;
use std::time::Duration;

use proxy_core::NetNamespace;
use tracing::warn;

use crate::netlink::Conn;
use crate::netlink::nft::{self, msg};
use crate::netlink::wire::Messages;
use crate::render::TABLE;

/// One foreign (or unknown) transaction that touched our table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The generation it produced (`None`: events were lost).
    pub generation: Option<u32>,
    /// The committing process, as the kernel names it (`nft`, pid 1234).
    pub process: Option<String>,
    pub pid: Option<u32>,
    /// The netlink port of the socket the transaction came through.
    pub port: Option<u32>,
    /// What it did to our objects, in order (`delete chain services`, ...;
    /// the first 16).
    pub what: Vec<String>,
    /// How many of our objects it touched, by kind (`table`, `chain`,
    /// `rule`, `set`, `element`, `object` for additions of other kinds).
    pub kinds: std::collections::BTreeMap<String, u64>,
}

fn kind(verb: &str) -> &'static str {
    match verb {
        "delete table" => "table",
        "delete chain" => "chain",
        "delete rule from chain" | "add rule to chain" => "rule",
        "delete set" => "set",
        "delete elements from set" | "add elements to set" => "element",
        _ => "object",
    }
}

fn describe(m: &crate::netlink::wire::Message<'_>) -> Option<(&'static str, String)> {
    let (table, name) = nft::object_of(m);
    if table != Some(TABLE) {
        return None;
    }
    let family = match m.family() {
        Some(nft::NFPROTO_IPV4) => "ip",
        Some(nft::NFPROTO_IPV6) => "ip6",
        _ => return None,
    };
    let verb = match nft::nft_msg(m.msg_type)? {
        msg::NEWTABLE => "add table",
        msg::DELTABLE => "delete table",
        msg::NEWCHAIN => "add chain",
        msg::DELCHAIN => "delete chain",
        msg::NEWRULE => "add rule to chain",
        msg::DELRULE => "delete rule from chain",
        msg::NEWSET => "add set",
        msg::DELSET => "delete set",
        msg::NEWSETELEM => "add elements to set",
        msg::DELSETELEM => "delete elements from set",
        _ => return None,
    };
    Some((
        kind(verb),
        match name {
            Some(n) => format!("{verb} {family} {TABLE} {n}"),
            None => format!("{verb} {family} {TABLE}"),
        },
    ))
}

/// Runs until `keep_going` says stop (checked at least twice a second),
/// calling `on_change` for every transaction that touched our table, then
/// `handled` with every generation seen (whether it touched our table or
/// not). Blocking; opens its socket in `netns`.
pub fn run(
    netns: &NetNamespace,
    subscribed: &(dyn Fn() + Sync),
    keep_going: &(dyn Fn() -> bool + Sync),
    on_change: &(dyn Fn(Change) + Sync),
    handled: &(dyn Fn(u32) + Sync),
) -> io::Result<()> {
    netns.run(|| -> io::Result<()> {
        let sock = Conn::monitor()?;
        subscribed();
        let mut pending: Vec<String> = Vec::new();
        let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
        while keep_going() {
            if !Conn::readable(&sock, Duration::from_millis(500)) {
                continue;
            }
            let data = match sock.recv_from_full() {
                Ok((d, _)) => d,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // Events were dropped: we cannot tell what happened.
                    warn!("nf_tables events lost (receive buffer overrun); checking our table");
                    let mut lost = std::collections::BTreeMap::new();
                    lost.insert("object".to_string(), 1);
                    on_change(Change {
                        generation: None,
                        process: None,
                        pid: None,
                        port: None,
                        what: vec!["events lost".into()],
                        kinds: lost,
                    });
                    pending.clear();
                    kinds.clear();
                    continue;
                }
                Err(e) => return Err(e),
            };
            for m in Messages::new(&data) {
                if let Some((generation, pid, process)) = nft::parse_gen(&m) {
                    if !kinds.is_empty() {
                        on_change(Change {
                            generation: Some(generation),
                            process,
                            pid,
                            port: Some(m.port),
                            what: std::mem::take(&mut pending),
                            kinds: std::mem::take(&mut kinds),
                        });
                    }
                    handled(generation);
                } else if let Some((k, d)) = describe(&m) {
                    *kinds.entry(k.to_string()).or_insert(0) += 1;
                    if pending.len() < 16 {
                        pending.push(d);
                    } else if pending.len() == 16 {
                        pending.push("...".into());
                    }
                }
            }
        }
        Ok(())
    })?
}
