//! Byte-level tests of every IPVS message we build or parse.
//!
//! The expected bytes are written out by hand from `include/uapi/linux/ip_vs.h`,
//! `genetlink.h` and `netlink.h` (x86_64, little-endian), one field per line.
//! A test family id of 0x23 and sequence number 7 are used throughout.

#![cfg(target_endian = "little")]

use super::*;

const FAMILY: u16 = 0x23;
const SEQ: u32 = 7;

fn key() -> ServiceKey {
    ServiceKey { protocol: Protocol::Tcp, addr: "10.96.0.10".parse().unwrap(), port: 80 }
}

fn real_server() -> RealServer {
    RealServer::nat("10.244.1.5".parse().unwrap(), 8080, 1)
}

/// `IPVS_CMD_ATTR_SERVICE` with the identity of tcp 10.96.0.10:80 (48 bytes).
#[rustfmt::skip]
const SERVICE_ID: &[u8] = &[
    0x30, 0x00, 0x01, 0x00,             // nla_len 48, IPVS_CMD_ATTR_SERVICE (no NLA_F_NESTED, like ipvsadm)
    0x06, 0x00, 0x01, 0x00,             //   nla_len 6, IPVS_SVC_ATTR_AF
    0x02, 0x00, 0x00, 0x00,             //     AF_INET, 2 bytes padding
    0x06, 0x00, 0x02, 0x00,             //   nla_len 6, IPVS_SVC_ATTR_PROTOCOL
    0x06, 0x00, 0x00, 0x00,             //     IPPROTO_TCP, padding
    0x14, 0x00, 0x03, 0x00,             //   nla_len 20, IPVS_SVC_ATTR_ADDR (union nf_inet_addr)
    0x0a, 0x60, 0x00, 0x0a,             //     10.96.0.10
    0x00, 0x00, 0x00, 0x00,             //     rest of the 16-byte union
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
    0x06, 0x00, 0x04, 0x00,             //   nla_len 6, IPVS_SVC_ATTR_PORT
    0x00, 0x50, 0x00, 0x00,             //     80, big-endian, padding
];

/// nlmsghdr + genlmsghdr for an IPVS request with ACK.
fn header(len: u32, flags: u16, command: u8) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&len.to_le_bytes()); // nlmsg_len
    h.extend_from_slice(&FAMILY.to_le_bytes()); // nlmsg_type: the IPVS family id
    h.extend_from_slice(&flags.to_le_bytes()); // nlmsg_flags
    h.extend_from_slice(&SEQ.to_le_bytes()); // nlmsg_seq
    h.extend_from_slice(&0u32.to_le_bytes()); // nlmsg_pid: 0, the kernel assigns
    h.extend_from_slice(&[command, GENL_VERSION, 0, 0]); // genlmsghdr: cmd, version 1, reserved
    h
}

const REQUEST_ACK: u16 = 0x0005; // NLM_F_REQUEST | NLM_F_ACK
const REQUEST_DUMP: u16 = 0x0301; // NLM_F_REQUEST | NLM_F_DUMP (ROOT | MATCH)

#[test]
fn resolve_family_bytes() {
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x20, 0x00, 0x00, 0x00,         // nlmsg_len 32
        0x10, 0x00,                     // nlmsg_type GENL_ID_CTRL
        0x05, 0x00,                     // NLM_F_REQUEST | NLM_F_ACK
        0x07, 0x00, 0x00, 0x00,         // seq 7
        0x00, 0x00, 0x00, 0x00,         // pid 0
        0x03, 0x02, 0x00, 0x00,         // CTRL_CMD_GETFAMILY, version 2, reserved
        0x09, 0x00, 0x02, 0x00,         // nla_len 9, CTRL_ATTR_FAMILY_NAME
        b'I', b'P', b'V', b'S',         // "IPVS"
        0x00, 0x00, 0x00, 0x00,         // NUL, 3 bytes padding
    ];
    assert_eq!(build(&Request::ResolveFamily, FAMILY, SEQ).unwrap(), expected);
}

#[test]
fn new_service_bytes() {
    let vs = VirtualServer {
        key: key(),
        scheduler: "rr".into(),
        flags: SVC_F_PERSISTENT,
        timeout: 10800,
        netmask: u32::MAX,
    };
    let mut expected = header(104, REQUEST_ACK, cmd::NEW_SERVICE);
    #[rustfmt::skip]
    expected.extend_from_slice(&[
        0x54, 0x00, 0x01, 0x00,         // nla_len 84, IPVS_CMD_ATTR_SERVICE
        0x06, 0x00, 0x01, 0x00,         //   IPVS_SVC_ATTR_AF
        0x02, 0x00, 0x00, 0x00,         //     AF_INET
        0x06, 0x00, 0x02, 0x00,         //   IPVS_SVC_ATTR_PROTOCOL
        0x06, 0x00, 0x00, 0x00,         //     IPPROTO_TCP
        0x14, 0x00, 0x03, 0x00,         //   IPVS_SVC_ATTR_ADDR
        0x0a, 0x60, 0x00, 0x0a,         //     10.96.0.10
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x06, 0x00, 0x04, 0x00,         //   IPVS_SVC_ATTR_PORT
        0x00, 0x50, 0x00, 0x00,         //     80 big-endian
        0x07, 0x00, 0x06, 0x00,         //   nla_len 7, IPVS_SVC_ATTR_SCHED_NAME
        b'r', b'r', 0x00, 0x00,         //     "rr\0", padding
        0x0c, 0x00, 0x07, 0x00,         //   nla_len 12, IPVS_SVC_ATTR_FLAGS (struct ip_vs_flags)
        0x01, 0x00, 0x00, 0x00,         //     flags IP_VS_SVC_F_PERSISTENT
        0xff, 0xff, 0xff, 0xff,         //     mask: every bit is ours to set
        0x08, 0x00, 0x08, 0x00,         //   IPVS_SVC_ATTR_TIMEOUT
        0x30, 0x2a, 0x00, 0x00,         //     10800 s
        0x08, 0x00, 0x09, 0x00,         //   IPVS_SVC_ATTR_NETMASK
        0xff, 0xff, 0xff, 0xff,         //     /32
    ]);
    let built = build(&Request::NewService(vs.clone()), FAMILY, SEQ).unwrap();
    assert_eq!(built, expected);
    // SET_SERVICE is the same message with another command.
    let mut set = expected.clone();
    set[16] = cmd::SET_SERVICE;
    assert_eq!(build(&Request::SetService(vs.clone()), FAMILY, SEQ).unwrap(), set);
    // What we build parses back to what we meant.
    assert_eq!(parse(&built, FAMILY).unwrap(), vec![Reply::Service { seq: SEQ, service: vs }]);
}

#[test]
fn del_service_bytes() {
    let mut expected = header(68, REQUEST_ACK, cmd::DEL_SERVICE);
    expected.extend_from_slice(SERVICE_ID);
    assert_eq!(build(&Request::DelService(key()), FAMILY, SEQ).unwrap(), expected);
}

#[test]
fn new_dest_bytes() {
    let mut expected = header(140, REQUEST_ACK, cmd::NEW_DEST);
    expected.extend_from_slice(SERVICE_ID);
    #[rustfmt::skip]
    expected.extend_from_slice(&[
        0x48, 0x00, 0x02, 0x00,         // nla_len 72, IPVS_CMD_ATTR_DEST
        0x14, 0x00, 0x01, 0x00,         //   IPVS_DEST_ATTR_ADDR
        0x0a, 0xf4, 0x01, 0x05,         //     10.244.1.5
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x06, 0x00, 0x02, 0x00,         //   IPVS_DEST_ATTR_PORT
        0x1f, 0x90, 0x00, 0x00,         //     8080 big-endian
        0x08, 0x00, 0x03, 0x00,         //   IPVS_DEST_ATTR_FWD_METHOD
        0x00, 0x00, 0x00, 0x00,         //     IP_VS_CONN_F_MASQ
        0x08, 0x00, 0x04, 0x00,         //   IPVS_DEST_ATTR_WEIGHT
        0x01, 0x00, 0x00, 0x00,         //     1
        0x08, 0x00, 0x05, 0x00,         //   IPVS_DEST_ATTR_U_THRESH
        0x00, 0x00, 0x00, 0x00,         //     no limit
        0x08, 0x00, 0x06, 0x00,         //   IPVS_DEST_ATTR_L_THRESH
        0x00, 0x00, 0x00, 0x00,         //     no limit
        0x06, 0x00, 0x0b, 0x00,         //   IPVS_DEST_ATTR_ADDR_FAMILY (4.6+)
        0x02, 0x00, 0x00, 0x00,         //     AF_INET
    ]);
    let built = build(&Request::NewDest(key(), real_server()), FAMILY, SEQ).unwrap();
    assert_eq!(built, expected);
    let mut set = expected.clone();
    set[16] = cmd::SET_DEST;
    assert_eq!(build(&Request::SetDest(key(), real_server()), FAMILY, SEQ).unwrap(), set);
    assert_eq!(parse(&built, FAMILY).unwrap(), vec![Reply::Dest { seq: SEQ, dest: real_server() }]);
}

#[test]
fn del_dest_bytes() {
    let mut expected = header(100, REQUEST_ACK, cmd::DEL_DEST);
    expected.extend_from_slice(SERVICE_ID);
    #[rustfmt::skip]
    expected.extend_from_slice(&[
        0x20, 0x00, 0x02, 0x00,         // nla_len 32, IPVS_CMD_ATTR_DEST: identity only
        0x14, 0x00, 0x01, 0x00,         //   IPVS_DEST_ATTR_ADDR
        0x0a, 0xf4, 0x01, 0x05,         //     10.244.1.5
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x06, 0x00, 0x02, 0x00,         //   IPVS_DEST_ATTR_PORT
        0x1f, 0x90, 0x00, 0x00,         //     8080
    ]);
    let rs = real_server();
    assert_eq!(build(&Request::DelDest(key(), rs.addr, rs.port), FAMILY, SEQ).unwrap(), expected);
}

#[test]
fn get_service_bytes() {
    // A single GET_SERVICE (doit, with ACK): the service's identity only.
    let mut expected = header(68, REQUEST_ACK, cmd::GET_SERVICE);
    expected.extend_from_slice(SERVICE_ID);
    assert_eq!(build(&Request::GetService(key()), FAMILY, SEQ).unwrap(), expected);
}

#[test]
fn dump_bytes() {
    // GET_SERVICE dump: no attributes at all.
    assert_eq!(build(&Request::DumpServices, FAMILY, SEQ).unwrap(), header(20, REQUEST_DUMP, cmd::GET_SERVICE));
    // GET_DEST dump: the service whose real servers we want.
    let mut expected = header(68, REQUEST_DUMP, cmd::GET_DEST);
    expected.extend_from_slice(SERVICE_ID);
    assert_eq!(build(&Request::DumpDests(key()), FAMILY, SEQ).unwrap(), expected);
}

#[test]
fn set_timeouts_and_get_info_bytes() {
    let mut expected = header(44, REQUEST_ACK, cmd::SET_CONFIG);
    #[rustfmt::skip]
    expected.extend_from_slice(&[
        0x08, 0x00, 0x04, 0x00,         // IPVS_CMD_ATTR_TIMEOUT_TCP
        0x84, 0x03, 0x00, 0x00,         //   900 s
        0x08, 0x00, 0x05, 0x00,         // IPVS_CMD_ATTR_TIMEOUT_TCP_FIN
        0x78, 0x00, 0x00, 0x00,         //   120 s
        0x08, 0x00, 0x06, 0x00,         // IPVS_CMD_ATTR_TIMEOUT_UDP
        0x00, 0x00, 0x00, 0x00,         //   0: leave unchanged
    ]);
    let req = Request::SetTimeouts { tcp: 900, tcp_fin: 120, udp: 0 };
    assert_eq!(build(&req, FAMILY, SEQ).unwrap(), expected);
    assert_eq!(build(&Request::GetInfo, FAMILY, SEQ).unwrap(), header(20, REQUEST_ACK, cmd::GET_INFO));
}

#[test]
fn ipv6_and_sctp_service_identity() {
    let key6 = ServiceKey { protocol: Protocol::Sctp, addr: "fd00::a".parse().unwrap(), port: 443 };
    let built = build(&Request::DelService(key6), FAMILY, SEQ).unwrap();
    #[rustfmt::skip]
    let nested: &[u8] = &[
        0x30, 0x00, 0x01, 0x00,         // IPVS_CMD_ATTR_SERVICE
        0x06, 0x00, 0x01, 0x00,         //   IPVS_SVC_ATTR_AF
        0x0a, 0x00, 0x00, 0x00,         //     AF_INET6
        0x06, 0x00, 0x02, 0x00,         //   IPVS_SVC_ATTR_PROTOCOL
        0x84, 0x00, 0x00, 0x00,         //     IPPROTO_SCTP (132)
        0x14, 0x00, 0x03, 0x00,         //   IPVS_SVC_ATTR_ADDR
        0xfd, 0x00, 0x00, 0x00,         //     fd00::a
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x0a,
        0x06, 0x00, 0x04, 0x00,         //   IPVS_SVC_ATTR_PORT
        0x01, 0xbb, 0x00, 0x00,         //     443 big-endian
    ];
    assert_eq!(&built[20..], nested);
}

#[test]
fn scheduler_name_limits() {
    let mut vs = VirtualServer { key: key(), scheduler: String::new(), flags: 0, timeout: 0, netmask: u32::MAX };
    assert!(build(&Request::NewService(vs.clone()), FAMILY, SEQ).is_err());
    vs.scheduler = "a-sixteen-chars!".into();
    assert!(build(&Request::NewService(vs), FAMILY, SEQ).is_err());
}

// ---- replies the kernel sends ----

#[test]
fn parse_family_reply() {
    #[rustfmt::skip]
    let reply: &[u8] = &[
        0x28, 0x00, 0x00, 0x00,         // nlmsg_len 40
        0x10, 0x00, 0x00, 0x00,         // GENL_ID_CTRL, no flags
        0x07, 0x00, 0x00, 0x00,         // seq 7
        0x99, 0x00, 0x00, 0x00,         // pid of our socket
        0x01, 0x02, 0x00, 0x00,         // CTRL_CMD_NEWFAMILY, version 2
        0x09, 0x00, 0x02, 0x00,         // CTRL_ATTR_FAMILY_NAME
        b'I', b'P', b'V', b'S',
        0x00, 0x00, 0x00, 0x00,
        0x06, 0x00, 0x01, 0x00,         // CTRL_ATTR_FAMILY_ID
        0x23, 0x00, 0x00, 0x00,         //   0x23
    ];
    assert_eq!(parse(reply, 0).unwrap(), vec![Reply::Family { seq: 7, id: 0x23 }]);
}

#[test]
fn parse_ack_error_and_done() {
    #[rustfmt::skip]
    let replies: &[u8] = &[
        // an ACK, capped (NETLINK_CAP_ACK): only the request's header is echoed
        0x24, 0x00, 0x00, 0x00,         // nlmsg_len 36
        0x02, 0x00, 0x00, 0x01,         // NLMSG_ERROR, NLM_F_CAPPED
        0x07, 0x00, 0x00, 0x00,         // seq 7
        0x99, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,         // error 0: success
        0x44, 0x00, 0x00, 0x00,         // echoed request header ...
        0x23, 0x00, 0x05, 0x00,
        0x07, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        // an error with an extended-ACK message
        0x30, 0x00, 0x00, 0x00,         // nlmsg_len 48
        0x02, 0x00, 0x00, 0x03,         // NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS
        0x08, 0x00, 0x00, 0x00,         // seq 8
        0x99, 0x00, 0x00, 0x00,
        0xef, 0xff, 0xff, 0xff,         // -17: EEXIST
        0x44, 0x00, 0x00, 0x00,         // echoed request header
        0x23, 0x00, 0x05, 0x00,
        0x08, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x0b, 0x00, 0x01, 0x00,         // NLMSGERR_ATTR_MSG, nla_len 11
        b'e', b'x', b'i', b's',         //   "exists\0"
        b't', b's', 0x00, 0x00,
        // the end of a dump
        0x14, 0x00, 0x00, 0x00,         // nlmsg_len 20
        0x03, 0x00, 0x02, 0x00,         // NLMSG_DONE, NLM_F_MULTI
        0x09, 0x00, 0x00, 0x00,         // seq 9
        0x99, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,         // status 0
    ];
    assert_eq!(
        parse(replies, FAMILY).unwrap(),
        vec![
            Reply::Ack { seq: 7, errno: 0, message: None },
            Reply::Ack { seq: 8, errno: 17, message: Some("exists".into()) },
            Reply::Done { seq: 9 },
        ]
    );
}

#[test]
fn parse_dumped_service() {
    // As ip_vs_genl_fill_service (6.1) writes it: NEW_SERVICE, NLM_F_MULTI,
    // with HASHED set and statistics we do not read.
    #[rustfmt::skip]
    let mut reply: Vec<u8> = vec![
        0x00, 0x00, 0x00, 0x00,         // nlmsg_len, patched below
        0x23, 0x00, 0x02, 0x00,         // IPVS family, NLM_F_MULTI
        0x07, 0x00, 0x00, 0x00,
        0x99, 0x00, 0x00, 0x00,
        0x01, 0x01, 0x00, 0x00,         // IPVS_CMD_NEW_SERVICE, version 1
        0x68, 0x00, 0x01, 0x00,         // IPVS_CMD_ATTR_SERVICE, nla_len 104
        0x06, 0x00, 0x01, 0x00,         //   AF
        0x02, 0x00, 0x00, 0x00,         //     AF_INET
        0x06, 0x00, 0x02, 0x00,         //   PROTOCOL
        0x11, 0x00, 0x00, 0x00,         //     IPPROTO_UDP
        0x14, 0x00, 0x03, 0x00,         //   ADDR
        0x0a, 0x60, 0x00, 0x0a,         //     10.96.0.10
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x06, 0x00, 0x04, 0x00,         //   PORT
        0x00, 0x35, 0x00, 0x00,         //     53
        0x08, 0x00, 0x06, 0x00,         //   SCHED_NAME
        b'w', b'r', b'r', 0x00,         //     "wrr\0"
        0x0c, 0x00, 0x07, 0x00,         //   FLAGS
        0x02, 0x00, 0x00, 0x00,         //     IP_VS_SVC_F_HASHED only (not persistent)
        0xff, 0xff, 0xff, 0xff,
        0x08, 0x00, 0x08, 0x00,         //   TIMEOUT
        0x00, 0x00, 0x00, 0x00,
        0x08, 0x00, 0x09, 0x00,         //   NETMASK
        0xff, 0xff, 0xff, 0xff,
        0x14, 0x00, 0x0a, 0x00,         //   STATS (nested, ignored)
        0x08, 0x00, 0x01, 0x00,         //     IPVS_STATS_ATTR_CONNS
        0x05, 0x00, 0x00, 0x00,
        0x08, 0x00, 0x02, 0x00,         //     IPVS_STATS_ATTR_INPKTS
        0x09, 0x00, 0x00, 0x00,
    ];
    let len = reply.len() as u32;
    reply[..4].copy_from_slice(&len.to_le_bytes());
    let expected = VirtualServer {
        key: ServiceKey { protocol: Protocol::Udp, addr: "10.96.0.10".parse().unwrap(), port: 53 },
        scheduler: "wrr".into(),
        flags: 0,
        timeout: 0,
        netmask: u32::MAX,
    };
    assert_eq!(parse(&reply, FAMILY).unwrap(), vec![Reply::Service { seq: 7, service: expected }]);
}

#[test]
fn parse_dumped_dest_with_counters() {
    #[rustfmt::skip]
    let mut reply: Vec<u8> = vec![
        0x00, 0x00, 0x00, 0x00,         // nlmsg_len, patched below
        0x23, 0x00, 0x02, 0x00,         // IPVS family, NLM_F_MULTI
        0x07, 0x00, 0x00, 0x00,
        0x99, 0x00, 0x00, 0x00,
        0x05, 0x01, 0x00, 0x00,         // IPVS_CMD_NEW_DEST, version 1
        0x60, 0x00, 0x02, 0x00,         // IPVS_CMD_ATTR_DEST, nla_len 96
        0x14, 0x00, 0x01, 0x00,         //   ADDR
        0xfd, 0x00, 0x00, 0x00,         //     fd00::5
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x05,
        0x06, 0x00, 0x02, 0x00,         //   PORT
        0x1f, 0x90, 0x00, 0x00,         //     8080
        0x08, 0x00, 0x03, 0x00,         //   FWD_METHOD
        0x00, 0x00, 0x00, 0x00,         //     MASQ
        0x08, 0x00, 0x04, 0x00,         //   WEIGHT
        0x00, 0x00, 0x00, 0x00,         //     0: draining
        0x08, 0x00, 0x05, 0x00,         //   U_THRESH
        0x00, 0x00, 0x00, 0x00,
        0x08, 0x00, 0x06, 0x00,         //   L_THRESH
        0x00, 0x00, 0x00, 0x00,
        0x08, 0x00, 0x07, 0x00,         //   ACTIVE_CONNS
        0x02, 0x00, 0x00, 0x00,         //     2
        0x08, 0x00, 0x08, 0x00,         //   INACT_CONNS
        0x03, 0x00, 0x00, 0x00,         //     3
        0x08, 0x00, 0x09, 0x00,         //   PERSIST_CONNS
        0x01, 0x00, 0x00, 0x00,         //     1
        0x06, 0x00, 0x0b, 0x00,         //   ADDR_FAMILY
        0x0a, 0x00, 0x00, 0x00,         //     AF_INET6
    ];
    let len = reply.len() as u32;
    reply[..4].copy_from_slice(&len.to_le_bytes());
    let mut expected = RealServer::nat("fd00::5".parse().unwrap(), 8080, 0);
    expected.active_conns = 2;
    expected.inactive_conns = 3;
    expected.persistent_conns = 1;
    assert_eq!(parse(&reply, FAMILY).unwrap(), vec![Reply::Dest { seq: 7, dest: expected }]);
}

#[test]
fn truncated_input_is_an_error_not_a_panic() {
    let built = build(&Request::DelService(key()), FAMILY, SEQ).unwrap();
    for cut in [17, 30, 40, built.len() - 1] {
        let mut b = built[..cut].to_vec();
        // A length that claims more than the buffer holds.
        b[..4].copy_from_slice(&(built.len() as u32).to_le_bytes());
        assert!(parse(&b, FAMILY).is_err(), "cut at {cut}");
    }
}
