//! The dummy interface `switchyard0` that holds every ClusterIP, externalIP
//! and load-balancer IP, so that traffic to them is local and reaches IPVS's
//! LOCAL_IN hook; and the node's own addresses, for NodePort virtual servers.
//!
//! All of it through rtnetlink, on a thread inside the node namespace.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, CacheInfo};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkDummy, LinkUnspec};

/// The interface name, fixed so that a fresh process finds and owns it.
pub const DUMMY: &str = "switchyard0";

/// Concurrent rtnetlink requests in flight when adding or removing addresses.
const IN_FLIGHT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{operation}")]
    Netlink {
        operation: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{operation}")]
    Io {
        operation: String,
        #[source]
        source: std::io::Error,
    },
}

fn nl(operation: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let operation = operation.into();
    move |source| LinkError::Netlink { operation, source }
}

/// Runs `f` with an rtnetlink handle on a private current-thread runtime.
/// Call it on a thread inside the target namespace: the socket is opened here.
pub fn with_handle<T>(f: impl AsyncFnOnce(Handle) -> Result<T, LinkError>) -> Result<T, LinkError> {
    let io = |source| LinkError::Io { operation: "start rtnetlink runtime".into(), source };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(io)?;
    rt.block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|source| LinkError::Io { operation: "open rtnetlink".into(), source })?;
        let task = tokio::spawn(conn);
        let out = f(handle).await;
        task.abort();
        out
    })
}

/// `ip link show switchyard0`: its index, if it exists.
pub async fn dummy_index(handle: &Handle) -> Result<Option<u32>, LinkError> {
    Ok(dummy_link(handle).await?.map(|(index, _)| index))
}

/// `ip link show switchyard0`: its index and whether it is up, if it exists.
pub async fn dummy_link(handle: &Handle) -> Result<Option<(u32, bool)>, LinkError> {
    link_by_name(handle, DUMMY).await
}

/// `ip link show NAME`: its index and whether it is up, if it exists.
pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<(u32, bool)>, LinkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some((link.header.index, link.header.flags.contains(LinkFlags::Up)))),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("ip link show {name}"))(e)),
    }
}

/// What [`ensure_dummy`] had to repair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DummyRepair {
    /// switchyard0 did not exist (`ip link del switchyard0`, or a first run).
    pub created: bool,
    /// switchyard0 was down: its addresses were not local any more.
    pub set_up: bool,
}

/// `ip link add switchyard0 type dummy && ip link set switchyard0 up`: the
/// index, and what had to be done.
pub async fn ensure_dummy(handle: &Handle) -> Result<(u32, DummyRepair), LinkError> {
    match dummy_link(handle).await? {
        Some((index, true)) => return Ok((index, DummyRepair::default())),
        Some((index, false)) => {
            // A down link takes its addresses' local routes with it: every
            // VIP stops being local and IPVS never sees the traffic.
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(nl(format!("ip link set {DUMMY} up")))?;
            return Ok((index, DummyRepair { created: false, set_up: true }));
        }
        None => {}
    }
    // Up so that IPv6 addresses are usable; with /32 and /128 prefixes no
    // subnet route appears, and NOARP keeps the link silent.
    handle
        .link()
        .add(LinkDummy::new(DUMMY).up().arp(false).build())
        .execute()
        .await
        .map_err(nl(format!("ip link add {DUMMY} type dummy")))?;
    let index = dummy_index(handle).await?.ok_or_else(|| LinkError::Io {
        operation: format!("ip link add {DUMMY}"),
        source: std::io::Error::other("link missing right after creation"),
    })?;
    Ok((index, DummyRepair { created: true, set_up: false }))
}

/// `ip link del switchyard0` (its addresses go with it). No link is fine.
pub async fn delete_dummy(handle: &Handle) -> Result<bool, LinkError> {
    delete_link(handle, DUMMY).await
}

/// `ip link del NAME` (its addresses go with it); whether it existed.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, LinkError> {
    match link_by_name(handle, name).await? {
        Some((index, _)) => {
            handle.link().del(index).execute().await.map_err(nl(format!("ip link del {name}")))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })
}

/// `ip addr show dev INDEX` (or every interface with `None`): (interface index, address).
pub async fn addresses(handle: &Handle, index: Option<u32>) -> Result<Vec<(u32, IpAddr)>, LinkError> {
    let mut req = handle.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    let msgs: Vec<AddressMessage> = req.execute().try_collect().await.map_err(nl("ip addr show"))?;
    Ok(msgs
        .iter()
        .filter(|m| index.is_none_or(|i| m.header.index == i))
        .filter_map(|m| address_of(m).map(|ip| (m.header.index, ip)))
        .collect())
}

/// Interface indexes and names, for telling node addresses from ours and loopback.
pub async fn links(handle: &Handle) -> Result<Vec<(u32, String)>, LinkError> {
    let msgs: Vec<LinkMessage> = handle.link().get().execute().try_collect().await.map_err(nl("ip link show"))?;
    Ok(msgs
        .iter()
        .map(|m| {
            let name = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            (m.header.index, name)
        })
        .collect())
}

/// The node's addresses for NodePort: every address except on loopback and
/// `switchyard0`, and except IPv6 link-local ones.
pub async fn node_addresses(handle: &Handle) -> Result<Vec<IpAddr>, LinkError> {
    let links = links(handle).await?;
    let excluded: BTreeSet<u32> = links.iter().filter(|(_, n)| n == "lo" || n == DUMMY).map(|(i, _)| *i).collect();
    let mut out: Vec<IpAddr> = addresses(handle, None)
        .await?
        .into_iter()
        .filter(|(i, ip)| {
            !excluded.contains(i)
                && !ip.is_loopback()
                && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
        })
        .map(|(_, ip)| ip)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Makes the addresses of `switchyard0` exactly `wanted` (host prefixes):
/// `ip addr add VIP/32 dev switchyard0` / `ip addr del ...`. Returns (added, removed).
pub async fn sync_addresses(
    handle: &Handle,
    index: u32,
    wanted: &BTreeSet<IpAddr>,
) -> Result<(Vec<IpAddr>, Vec<IpAddr>), LinkError> {
    let current: BTreeSet<IpAddr> = addresses(handle, Some(index)).await?.into_iter().map(|(_, ip)| ip).collect();
    // The kernel's own IPv6 link-local address of the dummy is not ours to remove.
    let stale: Vec<IpAddr> = current
        .iter()
        .filter(|ip| !wanted.contains(ip) && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .copied()
        .collect();
    let missing: Vec<IpAddr> = wanted.difference(&current).copied().collect();
    change_addresses(handle, index, &missing, &stale).await?;
    Ok((missing, stale))
}

/// `ip addr add` each of `missing` and `ip addr del` each of `stale` on switchyard0, pipelined.
pub async fn change_addresses(
    handle: &Handle,
    index: u32,
    missing: &[IpAddr],
    stale: &[IpAddr],
) -> Result<(), LinkError> {
    let adds = futures::stream::iter(missing.iter().map(|ip| {
        let handle = handle.clone();
        let ip = *ip;
        async move {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            let mut req = handle.address().add(index, ip, prefix).replace();
            if ip.is_ipv6() {
                // No duplicate address detection: a VIP must work at once.
                req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
                // Deprecated (preferred lifetime 0, valid forever): still
                // accepted as a destination, but never picked as a source.
                // IPv6 source selection (RFC 6724 rule 8, longest prefix)
                // otherwise prefers a VIP over the outgoing interface's
                // address when masquerading, and endpoints see the VIP.
                let mut lifetimes = CacheInfo::default();
                lifetimes.ifa_preferred = 0;
                lifetimes.ifa_valid = u32::MAX;
                req.message_mut().attributes.push(AddressAttribute::CacheInfo(lifetimes));
            }
            req.execute().await.map_err(nl(format!("ip addr add {ip}/{prefix} dev {DUMMY}")))
        }
    }))
    .buffer_unordered(IN_FLIGHT)
    .collect::<Vec<_>>()
    .await;
    adds.into_iter().collect::<Result<Vec<()>, _>>()?;
    let dels = futures::stream::iter(stale.iter().map(|ip| {
        let handle = handle.clone();
        let ip = *ip;
        async move {
            let mut msg = AddressMessage::default();
            msg.header.family = if ip.is_ipv4() {
                rtnetlink::packet_route::AddressFamily::Inet
            } else {
                rtnetlink::packet_route::AddressFamily::Inet6
            };
            msg.header.index = index;
            msg.header.prefix_len = if ip.is_ipv4() { 32 } else { 128 };
            msg.attributes.push(AddressAttribute::Local(ip));
            msg.attributes.push(AddressAttribute::Address(ip));
            match handle.address().del(msg).execute().await {
                Ok(()) => Ok(()),
                // Already gone (EADDRNOTAVAIL): the goal is reached.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => Ok(()),
                Err(e) => Err(nl(format!("ip addr del {ip} dev {DUMMY}"))(e)),
            }
        }
    }))
    .buffer_unordered(IN_FLIGHT)
    .collect::<Vec<_>>()
    .await;
    dels.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(())
}
