//! rtnetlink, synchronously, on the calling thread's namespace: link
//! events (so that a new pod interface gets the TC programs at once) and,
//! on kernels without TCX, the tc filters of an interface (so that a
//! deleted filter is seen).
//!
//! The `rtnetlink` crate is async and runs its connection as a task; the
//! backend's kernel work runs on plain threads inside the namespace, so it
//! uses netlink-sys sockets with netlink-packet-route messages directly.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use aya::programs::TcAttachType;
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `RTMGRP_LINK`: RTM_NEWLINK / RTM_DELLINK notifications.
const RTMGRP_LINK: u32 = 1;

/// A socket subscribed to link events of the current namespace
/// (`ip monitor link`). Non-blocking: [`LinkEvents::drain`] after poll(2)
/// says it is readable.
#[derive(Debug)]
pub struct LinkEvents {
    sock: Socket,
    buf: Vec<u8>,
}

impl LinkEvents {
    pub fn open() -> io::Result<LinkEvents> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        sock.set_non_blocking(true)?;
        Ok(LinkEvents { sock, buf: vec![0; 64 * 1024] })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Reads every pending message; true when any arrived, or when the
    /// kernel dropped some (ENOBUFS: the socket overflowed during a burst of
    /// changes). The caller then re-reads the interface list: what changed
    /// is not needed, only that something did.
    pub fn drain(&mut self) -> bool {
        let mut any = false;
        loop {
            match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(0) => return any,
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return any,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => any = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

/// One bpf classifier on a clsact hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    pub priority: u16,
    pub handle: u32,
    pub prog_id: Option<u32>,
}

fn parent(hook: TcAttachType) -> TcHandle {
    let minor = match hook {
        TcAttachType::Egress => TcHandle::MIN_EGRESS,
        _ => TcHandle::MIN_INGRESS,
    };
    TcHandle { major: TcHandle::CLSACT.major, minor }
}

/// `RTM_GETTFILTER` with `NLM_F_DUMP` for one clsact hook of `ifindex`
/// (`tc filter show dev IF ingress|egress`).
pub fn filter_dump_message(ifindex: u32, hook: TcAttachType, seq: u32) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut tc = TcMessage::default();
    tc.header.index = ifindex as i32;
    tc.header.parent = parent(hook);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetTrafficFilter(tc)));
    msg.finalize();
    msg
}

/// The bpf filter a dumped message describes, if it is one.
pub fn bpf_filter_of(msg: &TcMessage) -> Option<BpfFilter> {
    let mut is_bpf = false;
    let mut prog_id = None;
    for attr in &msg.attributes {
        match attr {
            TcAttribute::Kind(kind) => is_bpf = kind == "bpf",
            TcAttribute::Options(opts) => {
                for opt in opts {
                    if let TcOption::Bpf(TcFilterBpfOption::ProgId(id)) = opt {
                        prog_id = Some(*id);
                    }
                }
            }
            _ => {}
        }
    }
    // tcm_info holds (priority << 16) | protocol.
    let handle = (u32::from(msg.header.handle.major) << 16) | u32::from(msg.header.handle.minor);
    is_bpf.then_some(BpfFilter { priority: (msg.header.info >> 16) as u16, handle, prog_id })
}

/// The bpf filters on a clsact hook of `ifindex`. ENOENT/EINVAL (no clsact
/// qdisc) reads as none.
pub fn bpf_filters(ifindex: u32, hook: TcAttachType) -> io::Result<Vec<BpfFilter>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let seq = 1;
    let msg = filter_dump_message(ifindex, hook, seq);
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut out = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            if msg.header.sequence_number == seq {
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code.map(|c| -c.get()) {
                            None => Ok(out),
                            Some(libc::ENOENT | libc::EINVAL) => Ok(Vec::new()),
                            Some(code) => Err(io::Error::from_raw_os_error(code)),
                        };
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(tc)) => {
                        out.extend(bpf_filter_of(&tc));
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_dump_request_bytes() {
        let msg = filter_dump_message(5, TcAttachType::Ingress, 7);
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            0x24, 0x00, 0x00, 0x00, // nlmsg_len: 36
            0x2e, 0x00,             // nlmsg_type: RTM_GETTFILTER (46)
            0x01, 0x03,             // nlmsg_flags: NLM_F_REQUEST | NLM_F_DUMP
            0x07, 0x00, 0x00, 0x00, // nlmsg_seq: 7
            0x00, 0x00, 0x00, 0x00, // nlmsg_pid: 0
            0x00,                   // tcm_family: AF_UNSPEC
            0x00, 0x00, 0x00,       // padding
            0x05, 0x00, 0x00, 0x00, // tcm_ifindex: 5
            0x00, 0x00, 0x00, 0x00, // tcm_handle: 0:0
            0xf2, 0xff, 0xff, 0xff, // tcm_parent: ffff:fff2 (clsact ingress)
            0x00, 0x00, 0x00, 0x00, // tcm_info: 0 (any priority, any protocol)
        ];
        assert_eq!(buf, expected);
        let back = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf).expect("parses");
        assert_eq!(back, msg);
    }

    #[test]
    fn parses_our_filter_from_a_dump() {
        // `tc filter show dev IF ingress` answer for our filter: prio 0x5359,
        // protocol all (0x0003, big-endian in tcm_info's low half), handle 1.
        #[rustfmt::skip]
        let raw: Vec<u8> = vec![
            0x00, 0x00, 0x00, 0x00, // tcm_family + padding
            0x05, 0x00, 0x00, 0x00, // tcm_ifindex: 5
            0x01, 0x00, 0x00, 0x00, // tcm_handle: 0:1
            0xf2, 0xff, 0xff, 0xff, // tcm_parent: clsact ingress
            0x00, 0x03, 0x59, 0x53, // tcm_info: prio 0x5359 << 16 | ETH_P_ALL (htons)
            0x08, 0x00, 0x01, 0x00, // TCA_KIND, 8 bytes
            0x62, 0x70, 0x66, 0x00, //   "bpf\0"
            0x0c, 0x00, 0x02, 0x00, // TCA_OPTIONS, 12 bytes
            0x08, 0x00, 0x0b, 0x00, //   TCA_BPF_ID, 8 bytes
            0x2a, 0x00, 0x00, 0x00, //     program id 42
        ];
        #[rustfmt::skip]
        let mut bytes: Vec<u8> = vec![
            0x00, 0x00, 0x00, 0x00, // nlmsg_len (set below)
            0x2c, 0x00,             // nlmsg_type: RTM_NEWTFILTER (44)
            0x02, 0x00,             // nlmsg_flags: NLM_F_MULTI
            0x01, 0x00, 0x00, 0x00, // nlmsg_seq: 1
            0x00, 0x00, 0x00, 0x00, // nlmsg_pid: 0
        ];
        bytes.extend_from_slice(&raw);
        let len = bytes.len() as u32;
        bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).expect("parses");
        let NetlinkPayload::InnerMessage(parsed) = msg.payload else { panic!("{msg:?}") };
        let RouteNetlinkMessage::NewTrafficFilter(tc) = parsed else { panic!("{parsed:?}") };
        assert_eq!(bpf_filter_of(&tc), Some(BpfFilter { priority: 0x5359, handle: 1, prog_id: Some(42) }));
    }
}
