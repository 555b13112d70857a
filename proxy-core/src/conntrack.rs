//! Removing stale UDP entries from the kernel's conntrack table over
//! netlink (feature `conntrack`).
//!
//! Which flows are stale is the core's answer ([`crate::stale`]); this
//! module deletes them, for every backend whose flows go through the
//! kernel's conntrack: iptables, nftables and IPVS (with
//! `net.ipv4.vs.conntrack=1`, IPVS rewrites the entry's reply tuple to the
//! real server, so the same match holds). eBPF keeps its own connection
//! table in a map and deletes from it with the same answer. CLI equivalent,
//! per flow: `conntrack -D -p udp --orig-src S --orig-dst D --sport SP --dport DP`.
//!
//! It lives in proxy-core, behind a feature, because every backend may
//! depend on proxy-core and on nothing of another backend's (DESIGN.md);
//! proxy-core itself stays free of netlink unless a backend asks for it.
//! No crate offers conntrack deletion over netlink; netlink-packet-netfilter
//! builds and parses the messages, this module only sends them.
//!
//! Netlink sockets belong to the namespace of the thread that opens them,
//! so all of it runs through [`NetNamespace::run`].

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};
use tracing::debug;

use crate::model::IpFamily;
use crate::netns::NetNamespace;
pub use crate::stale::{FrontendMatch, StaleFlows, StaleIndex};

/// A conntrack netlink operation that failed (the kernel's errno in `source`).
#[derive(Debug, thiserror::Error)]
#[error("conntrack {operation} failed")]
pub struct ConntrackError {
    /// What was being done: `open netlink socket`, `dump`, `delete`, `enter network namespace`.
    pub operation: &'static str,
    #[source]
    pub source: io::Error,
}

/// The parts of a conntrack entry we look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub protocol: u8,
    pub orig_src: SocketAddr,
    pub orig_dst: SocketAddr,
    /// Where replies come from: the endpoint when DNATed, else `orig_dst`.
    pub reply_src: SocketAddr,
}

/// Whether `flow` is stale under any of `rules` (the core's [`StaleFlows`]).
pub fn is_stale(flow: &Flow, rules: &StaleIndex) -> bool {
    flow.protocol == 17 && rules.matches(flow.orig_dst, flow.reply_src)
}

fn nf_family(family: IpFamily) -> NetfilterProtoFamily {
    match family {
        IpFamily::V4 => NetfilterProtoFamily::IPv4,
        IpFamily::V6 => NetfilterProtoFamily::IPv6,
    }
}

fn message(family: IpFamily, flags: u16, seq: u32, ct: ConntrackMessage) -> NetlinkMessage<NetfilterMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(NetfilterHeader::new(nf_family(family), 0, 0), ct)),
    );
    msg.finalize();
    msg
}

/// `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`: every entry of a family.
pub fn dump_message(family: IpFamily, seq: u32) -> NetlinkMessage<NetfilterMessage> {
    message(family, NLM_F_REQUEST | NLM_F_DUMP, seq, ConntrackMessage::Get(vec![]))
}

/// `IPCTNL_MSG_CT_DELETE` of one entry by its original tuple.
pub fn delete_message(family: IpFamily, seq: u32, flow: &Flow) -> NetlinkMessage<NetfilterMessage> {
    let tuple = vec![
        Tuple::Ip(vec![IPTuple::SourceAddress(flow.orig_src.ip()), IPTuple::DestinationAddress(flow.orig_dst.ip())]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(flow.protocol)),
            ProtoTuple::SourcePort(flow.orig_src.port()),
            ProtoTuple::DestinationPort(flow.orig_dst.port()),
        ]),
    ];
    message(
        family,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(tuple)]),
    )
}

fn tuple_of(tuples: &[Tuple]) -> Option<(u8, SocketAddr, SocketAddr)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for t in tuples {
        match t {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(parts) => {
                for p in parts {
                    match p {
                        ProtoTuple::Protocol(p) => proto = Some(u8::from(*p)),
                        ProtoTuple::SourcePort(p) => sport = Some(*p),
                        ProtoTuple::DestinationPort(p) => dport = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let src: IpAddr = src?;
    let dst: IpAddr = dst?;
    Some((proto?, SocketAddr::new(src, sport.unwrap_or(0)), SocketAddr::new(dst, dport.unwrap_or(0))))
}

/// Reads a flow from a dumped entry.
pub fn flow_of(attrs: &[ConntrackAttribute]) -> Option<Flow> {
    let mut orig = None;
    let mut reply = None;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple_of(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple_of(t),
            _ => {}
        }
    }
    let (protocol, orig_src, orig_dst) = orig?;
    let (_, reply_src, _) = reply?;
    Some(Flow { protocol, orig_src, orig_dst, reply_src })
}

fn send(sock: &Socket, msg: &NetlinkMessage<NetfilterMessage>) -> io::Result<()> {
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0).map(drop)
}

/// Reads replies to request `seq` until DONE (dumps) or the ACK.
fn receive(sock: &Socket, seq: u32, mut each: impl FnMut(&ConntrackMessage)) -> io::Result<()> {
    loop {
        let (data, _) = sock.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            if msg.header.sequence_number == seq {
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(ct),
                        ..
                    }) => each(&ct),
                    _ => {}
                }
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

fn open() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&NlAddr::new(0, 0))?;
    Ok(sock)
}

/// Every UDP flow of a family in the current thread's namespace.
fn dump(sock: &Socket, family: IpFamily, seq: u32) -> io::Result<Vec<Flow>> {
    send(sock, &dump_message(family, seq))?;
    let mut flows = Vec::new();
    receive(sock, seq, |ct| {
        if let ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs) = ct
            && let Some(f) = flow_of(attrs)
            && f.protocol == 17
        {
            flows.push(f);
        }
    })?;
    Ok(flows)
}

/// Deletes the stale UDP flows of `family` in `netns`; returns how many.
pub fn clear_stale_udp(
    netns: &NetNamespace,
    family: IpFamily,
    rules: Vec<StaleFlows>,
) -> Result<usize, ConntrackError> {
    let err = |operation: &'static str| move |source| ConntrackError { operation, source };
    netns
        .run(move || -> Result<usize, ConntrackError> {
            let sock = open().map_err(err("open netlink socket"))?;
            let flows = dump(&sock, family, 1).map_err(err("dump"))?;
            let index = StaleIndex::new(&rules);
            let mut deleted = 0;
            for (i, flow) in flows.iter().filter(|f| is_stale(f, &index)).enumerate() {
                let seq = 2 + i as u32;
                send(&sock, &delete_message(family, seq, flow)).map_err(err("delete"))?;
                match receive(&sock, seq, |_| {}) {
                    Ok(()) => deleted += 1,
                    // Expired meanwhile.
                    Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {}
                    Err(e) => return Err(ConntrackError { operation: "delete", source: e }),
                }
                debug!(?flow, "deleted stale UDP conntrack entry");
            }
            Ok(deleted)
        })
        .map_err(err("enter network namespace"))?
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn flow(dst: &str, reply: &str) -> Flow {
        Flow {
            protocol: 17,
            orig_src: "10.244.1.5:40000".parse().unwrap(),
            orig_dst: dst.parse().unwrap(),
            reply_src: reply.parse().unwrap(),
        }
    }

    #[test]
    fn staleness() {
        let rules = vec![
            StaleFlows {
                frontend: FrontendMatch::Address("10.96.0.10:53".parse().unwrap()),
                allowed: ["10.244.2.2:53".parse().unwrap()].into(),
            },
            StaleFlows { frontend: FrontendMatch::NodePort(30053), allowed: BTreeSet::new() },
        ];
        let rules = StaleIndex::new(&rules);
        assert!(!is_stale(&flow("10.96.0.10:53", "10.244.2.2:53"), &rules));
        assert!(is_stale(&flow("10.96.0.10:53", "10.244.9.9:53"), &rules), "DNATed to a gone endpoint");
        assert!(is_stale(&flow("10.96.0.10:53", "10.96.0.10:53"), &rules), "never DNATed");
        assert!(!is_stale(&flow("10.96.0.11:53", "10.244.9.9:53"), &rules), "another Service");
        assert!(is_stale(&flow("192.168.0.1:30053", "10.244.9.9:53"), &rules));
        let mut tcp = flow("10.96.0.10:53", "10.244.9.9:53");
        tcp.protocol = 6;
        assert!(!is_stale(&tcp, &rules));
    }

    /// The delete request, byte by byte (what `conntrack -D` sends).
    #[test]
    fn delete_message_bytes() {
        let f = flow("10.96.0.10:53", "10.244.2.2:53");
        let msg = delete_message(IpFamily::V4, 7, &f);
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            // nlmsghdr: length 72, type (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, flags REQUEST|ACK, seq 7, pid 0
            72, 0, 0, 0,   0x02, 0x01,   0x05, 0x00,   7, 0, 0, 0,   0, 0, 0, 0,
            // nfgenmsg: family AF_INET, version 0, res_id 0
            2, 0, 0, 0,
            // CTA_TUPLE_ORIG (NLA_F_NESTED), length 52
            52, 0, 0x01, 0x80,
              // CTA_TUPLE_IP (NLA_F_NESTED), length 20
              20, 0, 0x01, 0x80,
                // CTA_IP_V4_SRC 10.244.1.5, CTA_IP_V4_DST 10.96.0.10
                8, 0, 1, 0,   10, 244, 1, 5,
                8, 0, 2, 0,   10, 96, 0, 10,
              // CTA_TUPLE_PROTO (NLA_F_NESTED), length 28
              28, 0, 0x02, 0x80,
                // CTA_PROTO_NUM 17 (padded), CTA_PROTO_SRC_PORT 40000, CTA_PROTO_DST_PORT 53 (big-endian)
                5, 0, 1, 0,   17, 0, 0, 0,
                6, 0, 2, 0,   0x9c, 0x40, 0, 0,
                6, 0, 3, 0,   0, 53, 0, 0,
        ];
        assert_eq!(buf, expected);
        // And it parses back to the same flow tuple.
        let parsed = NetlinkMessage::<NetfilterMessage>::deserialize(&buf).unwrap();
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(attrs)),
            ..
        }) = parsed.payload
        else {
            panic!("not a delete: {parsed:?}")
        };
        let ConntrackAttribute::CtaTupleOrig(t) = &attrs[0] else { panic!() };
        assert_eq!(tuple_of(t), Some((17, f.orig_src, f.orig_dst)));
    }
}
