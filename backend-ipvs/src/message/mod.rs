//! IPVS generic netlink messages: what we build and what we parse.
//!
//! The wire format is `include/uapi/linux/ip_vs.h` (genl family `IPVS`,
//! version 1). Every message is built and parsed with neli's `Nlmsghdr`,
//! `Genlmsghdr` and `Nlattr`; the tests at the bottom pin each one byte by
//! byte, so a change in neli or here cannot silently change what the kernel sees.
//!
//! Kernel quirks honoured here (checked against 6.1's `ip_vs_ctl.c`):
//! - addresses are always 16 bytes (`union nf_inet_addr`), IPv4 in the first four;
//! - ports are big-endian `u16`s, everything else host-endian;
//! - the scheduler name is NUL-terminated and at most 15 characters;
//! - `NEW_SERVICE`/`SET_SERVICE` need scheduler, flags, timeout and netmask
//!   (`ip_vs_genl_parse_service` with `full_entry`), destination commands only
//!   the service's identity; `NEW_DEST`/`SET_DEST` need forwarding method,
//!   weight and both thresholds.

use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use neli::consts::genl::{CtrlAttr, CtrlCmd};
use neli::consts::nl::{GenlId, NlmF, Nlmsg};
use neli::genl::{AttrTypeBuilder, Genlmsghdr, GenlmsghdrBuilder, Nlattr, NlattrBuilder};
use neli::nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder};
use neli::types::{Buffer, GenlBuffer};
use neli::{FromBytes, Size, ToBytes};

use proxy_core::{IpFamily, Protocol};

/// `IPVS_GENL_NAME`.
pub const FAMILY_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const GENL_VERSION: u8 = 1;

/// `IPVS_CMD_*`.
pub mod cmd {
    pub const NEW_SERVICE: u8 = 1;
    pub const SET_SERVICE: u8 = 2;
    pub const DEL_SERVICE: u8 = 3;
    pub const GET_SERVICE: u8 = 4;
    pub const NEW_DEST: u8 = 5;
    pub const SET_DEST: u8 = 6;
    pub const DEL_DEST: u8 = 7;
    pub const GET_DEST: u8 = 8;
    pub const SET_CONFIG: u8 = 12;
    pub const GET_INFO: u8 = 15;
}

/// `IPVS_CMD_ATTR_*`.
pub mod attr {
    pub const SERVICE: u16 = 1;
    pub const DEST: u16 = 2;
    pub const TIMEOUT_TCP: u16 = 4;
    pub const TIMEOUT_TCP_FIN: u16 = 5;
    pub const TIMEOUT_UDP: u16 = 6;
}

/// `IPVS_SVC_ATTR_*`.
pub mod svc {
    pub const AF: u16 = 1;
    pub const PROTOCOL: u16 = 2;
    pub const ADDR: u16 = 3;
    pub const PORT: u16 = 4;
    pub const FWMARK: u16 = 5;
    pub const SCHED_NAME: u16 = 6;
    pub const FLAGS: u16 = 7;
    pub const TIMEOUT: u16 = 8;
    pub const NETMASK: u16 = 9;
}

/// `IPVS_DEST_ATTR_*`.
pub mod dest {
    pub const ADDR: u16 = 1;
    pub const PORT: u16 = 2;
    pub const FWD_METHOD: u16 = 3;
    pub const WEIGHT: u16 = 4;
    pub const U_THRESH: u16 = 5;
    pub const L_THRESH: u16 = 6;
    pub const ACTIVE_CONNS: u16 = 7;
    pub const INACT_CONNS: u16 = 8;
    pub const PERSIST_CONNS: u16 = 9;
    pub const ADDR_FAMILY: u16 = 11;
}

/// `IPVS_INFO_ATTR_*`.
pub mod info {
    pub const VERSION: u16 = 1;
    pub const CONN_TAB_SIZE: u16 = 2;
}

/// `IP_VS_SVC_F_PERSISTENT`: sessionAffinity ClientIP.
pub const SVC_F_PERSISTENT: u32 = 0x0001;
/// `IP_VS_SVC_F_HASHED`: set by the kernel on every dumped service; never sent.
pub const SVC_F_HASHED: u32 = 0x0002;
/// `IP_VS_CONN_F_MASQ`: NAT forwarding (the only method a service proxy uses).
pub const CONN_F_MASQ: u32 = 0;
/// `IP_VS_SCHEDNAME_MAXLEN` including the NUL.
pub const SCHED_NAME_MAX: usize = 16;

/// `AF_INET` / `AF_INET6` as IPVS wants them.
pub fn af(family: IpFamily) -> u16 {
    match family {
        IpFamily::V4 => libc::AF_INET as u16,
        IpFamily::V6 => libc::AF_INET6 as u16,
    }
}

/// Errors decoding kernel replies.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("cannot serialize netlink message: {0}")]
    Build(String),
    #[error("cannot parse netlink message: {0}")]
    Parse(String),
    #[error("{what} is missing attribute {attr}")]
    Missing { what: &'static str, attr: u16 },
    #[error("unsupported value {value} for {what}")]
    Unsupported { what: &'static str, value: u64 },
}

fn build_err(e: impl std::fmt::Display) -> MessageError {
    MessageError::Build(e.to_string())
}

fn parse_err(e: impl std::fmt::Display) -> MessageError {
    MessageError::Parse(e.to_string())
}

/// Identifies a virtual server: `ipvsadm -t|-u|--sctp-service ADDR:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub protocol: Protocol,
    pub addr: IpAddr,
    pub port: u16,
}

impl ServiceKey {
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.addr)
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.protocol.as_lower_str(), std::net::SocketAddr::new(self.addr, self.port))
    }
}

/// A virtual server with its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    pub key: ServiceKey,
    /// `-s rr|wrr|lc|...`.
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` (without `HASHED`, which only the kernel sets).
    pub flags: u32,
    /// Persistence timeout in seconds (`-p`), meaningful with `SVC_F_PERSISTENT`.
    pub timeout: u32,
    /// Persistence granularity: 0xffffffff for IPv4 /32, 128 for IPv6.
    pub netmask: u32,
}

impl VirtualServer {
    /// Persistence as sessionAffinity ClientIP needs it: per client address.
    pub fn full_netmask(family: IpFamily) -> u32 {
        match family {
            IpFamily::V4 => u32::MAX,
            IpFamily::V6 => 128,
        }
    }

    pub fn persistence(&self) -> Option<u32> {
        (self.flags & SVC_F_PERSISTENT != 0).then_some(self.timeout)
    }
}

/// A real server of a virtual server: `ipvsadm -a -t VIP:PORT -r ADDR:PORT -m -w WEIGHT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealServer {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    /// `IP_VS_CONN_F_*` forwarding method.
    pub fwd_method: u32,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
    /// Read-only counters from dumps; zero in requests.
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persistent_conns: u32,
}

impl RealServer {
    /// A masqueraded real server with the given weight.
    pub fn nat(addr: IpAddr, port: u16, weight: u32) -> Self {
        RealServer {
            addr,
            port,
            weight,
            fwd_method: CONN_F_MASQ,
            upper_threshold: 0,
            lower_threshold: 0,
            active_conns: 0,
            inactive_conns: 0,
            persistent_conns: 0,
        }
    }

    pub fn socket_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.addr, self.port)
    }
}

/// One request to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `CTRL_CMD_GETFAMILY` for `IPVS`: the family id.
    ResolveFamily,
    /// `IPVS_CMD_GET_INFO`: the IPVS version, a cheap "is it there" check.
    GetInfo,
    /// `ipvsadm -A`.
    NewService(VirtualServer),
    /// `ipvsadm -E`.
    SetService(VirtualServer),
    /// `ipvsadm -D`.
    DelService(ServiceKey),
    /// `ipvsadm -a`.
    NewDest(ServiceKey, RealServer),
    /// `ipvsadm -e`.
    SetDest(ServiceKey, RealServer),
    /// `ipvsadm -d`.
    DelDest(ServiceKey, IpAddr, u16),
    /// `ipvsadm -Ln -t VIP:PORT` (service part): one virtual server, ESRCH when absent.
    GetService(ServiceKey),
    /// `ipvsadm -Ln` (services part): a dump.
    DumpServices,
    /// `ipvsadm -Ln -t VIP:PORT`: a dump of one service's real servers.
    DumpDests(ServiceKey),
    /// `ipvsadm --set TCP TCPFIN UDP` (0 leaves a value unchanged).
    SetTimeouts { tcp: u32, tcp_fin: u32, udp: u32 },
}

impl Request {
    pub fn is_dump(&self) -> bool {
        matches!(self, Request::DumpServices | Request::DumpDests(_))
    }

    /// The `ipvsadm` spelling, for errors and logs.
    pub fn describe(&self) -> String {
        match self {
            Request::ResolveFamily => "resolve genl family IPVS".into(),
            Request::GetInfo => "ipvsadm --version".into(),
            Request::NewService(vs) => format!("ipvsadm -A {} -s {}", vs.key, vs.scheduler),
            Request::SetService(vs) => format!("ipvsadm -E {} -s {}", vs.key, vs.scheduler),
            Request::DelService(k) => format!("ipvsadm -D {k}"),
            Request::NewDest(k, rs) => format!("ipvsadm -a {k} -r {} -m -w {}", rs.socket_addr(), rs.weight),
            Request::SetDest(k, rs) => format!("ipvsadm -e {k} -r {} -m -w {}", rs.socket_addr(), rs.weight),
            Request::DelDest(k, a, p) => format!("ipvsadm -d {k} -r {}", std::net::SocketAddr::new(*a, *p)),
            Request::GetService(k) => format!("ipvsadm -Ln {k} (service)"),
            Request::DumpServices => "ipvsadm -Ln".into(),
            Request::DumpDests(k) => format!("ipvsadm -Ln {k}"),
            Request::SetTimeouts { tcp, tcp_fin, udp } => format!("ipvsadm --set {tcp} {tcp_fin} {udp}"),
        }
    }
}

/// A generic netlink message as neli models it, with raw command and attribute numbers.
pub type GenlMessage = Nlmsghdr<u16, Genlmsghdr<u8, u16>>;

fn attr_bytes(kind: u16, payload: &[u8]) -> Result<Nlattr<u16, Buffer>, MessageError> {
    NlattrBuilder::default()
        .nla_type(AttrTypeBuilder::default().nla_type(kind).build().map_err(build_err)?)
        .nla_payload(Buffer::from(payload))
        .build()
        .map_err(build_err)
}

fn attr_u16(kind: u16, v: u16) -> Result<Nlattr<u16, Buffer>, MessageError> {
    attr_bytes(kind, &v.to_ne_bytes())
}

fn attr_u32(kind: u16, v: u32) -> Result<Nlattr<u16, Buffer>, MessageError> {
    attr_bytes(kind, &v.to_ne_bytes())
}

/// An empty attribute that nests `children` (no `NLA_F_NESTED`, as ipvsadm
/// and the kernel's own replies do; IPVS parses with the deprecated,
/// non-strict parser, so either is accepted).
fn nested(kind: u16, children: Vec<Nlattr<u16, Buffer>>) -> Result<Nlattr<u16, Buffer>, MessageError> {
    let mut payload = Vec::new();
    for c in &children {
        let mut buf = Cursor::new(vec![0; c.padded_size()]);
        c.to_bytes(&mut buf).map_err(build_err)?;
        payload.extend_from_slice(buf.get_ref());
    }
    attr_bytes(kind, &payload)
}

fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&a.octets());
            out
        }
        IpAddr::V6(a) => a.octets(),
    }
}

fn service_id_attrs(key: &ServiceKey) -> Result<Vec<Nlattr<u16, Buffer>>, MessageError> {
    Ok(vec![
        attr_u16(svc::AF, af(key.family()))?,
        attr_u16(svc::PROTOCOL, u16::from(key.protocol.number()))?,
        attr_bytes(svc::ADDR, &addr16(key.addr))?,
        attr_bytes(svc::PORT, &key.port.to_be_bytes())?,
    ])
}

fn service_full_attrs(vs: &VirtualServer) -> Result<Vec<Nlattr<u16, Buffer>>, MessageError> {
    if vs.scheduler.is_empty() || vs.scheduler.len() >= SCHED_NAME_MAX {
        return Err(MessageError::Build(format!("scheduler name {:?} is not 1..=15 characters", vs.scheduler)));
    }
    let mut attrs = service_id_attrs(&vs.key)?;
    let mut sched = vs.scheduler.as_bytes().to_vec();
    sched.push(0);
    attrs.push(attr_bytes(svc::SCHED_NAME, &sched)?);
    // struct ip_vs_flags { __u32 flags; __u32 mask; }: the mask says which bits to change.
    let mut flags = Vec::with_capacity(8);
    flags.extend_from_slice(&vs.flags.to_ne_bytes());
    flags.extend_from_slice(&u32::MAX.to_ne_bytes());
    attrs.push(attr_bytes(svc::FLAGS, &flags)?);
    attrs.push(attr_u32(svc::TIMEOUT, vs.timeout)?);
    attrs.push(attr_u32(svc::NETMASK, vs.netmask)?);
    Ok(attrs)
}

fn dest_id_attrs(addr: IpAddr, port: u16) -> Result<Vec<Nlattr<u16, Buffer>>, MessageError> {
    Ok(vec![attr_bytes(dest::ADDR, &addr16(addr))?, attr_bytes(dest::PORT, &port.to_be_bytes())?])
}

fn dest_full_attrs(rs: &RealServer) -> Result<Vec<Nlattr<u16, Buffer>>, MessageError> {
    let mut attrs = dest_id_attrs(rs.addr, rs.port)?;
    attrs.push(attr_u32(dest::FWD_METHOD, rs.fwd_method)?);
    attrs.push(attr_u32(dest::WEIGHT, rs.weight)?);
    attrs.push(attr_u32(dest::U_THRESH, rs.upper_threshold)?);
    attrs.push(attr_u32(dest::L_THRESH, rs.lower_threshold)?);
    attrs.push(attr_u16(dest::ADDR_FAMILY, af(IpFamily::of(&rs.addr)))?);
    Ok(attrs)
}

/// Builds the netlink message for `req`. `family` is the IPVS family id
/// (unused for [`Request::ResolveFamily`], which goes to the genl controller).
pub fn build(req: &Request, family: u16, seq: u32) -> Result<Vec<u8>, MessageError> {
    let (nl_type, command, version, attrs): (u16, u8, u8, Vec<Nlattr<u16, Buffer>>) = match req {
        Request::ResolveFamily => {
            let mut name = FAMILY_NAME.as_bytes().to_vec();
            name.push(0);
            let a = attr_bytes(u16::from(CtrlAttr::FamilyName), &name)?;
            (u16::from(GenlId::Ctrl), u8::from(CtrlCmd::Getfamily), 2, vec![a])
        }
        Request::GetInfo => (family, cmd::GET_INFO, GENL_VERSION, vec![]),
        Request::NewService(vs) => {
            (family, cmd::NEW_SERVICE, GENL_VERSION, vec![nested(attr::SERVICE, service_full_attrs(vs)?)?])
        }
        Request::SetService(vs) => {
            (family, cmd::SET_SERVICE, GENL_VERSION, vec![nested(attr::SERVICE, service_full_attrs(vs)?)?])
        }
        Request::DelService(k) => {
            (family, cmd::DEL_SERVICE, GENL_VERSION, vec![nested(attr::SERVICE, service_id_attrs(k)?)?])
        }
        Request::NewDest(k, rs) | Request::SetDest(k, rs) => (
            family,
            if matches!(req, Request::NewDest(..)) { cmd::NEW_DEST } else { cmd::SET_DEST },
            GENL_VERSION,
            vec![nested(attr::SERVICE, service_id_attrs(k)?)?, nested(attr::DEST, dest_full_attrs(rs)?)?],
        ),
        Request::DelDest(k, a, p) => (
            family,
            cmd::DEL_DEST,
            GENL_VERSION,
            vec![nested(attr::SERVICE, service_id_attrs(k)?)?, nested(attr::DEST, dest_id_attrs(*a, *p)?)?],
        ),
        Request::GetService(k) => {
            (family, cmd::GET_SERVICE, GENL_VERSION, vec![nested(attr::SERVICE, service_id_attrs(k)?)?])
        }
        Request::DumpServices => (family, cmd::GET_SERVICE, GENL_VERSION, vec![]),
        Request::DumpDests(k) => {
            (family, cmd::GET_DEST, GENL_VERSION, vec![nested(attr::SERVICE, service_id_attrs(k)?)?])
        }
        Request::SetTimeouts { tcp, tcp_fin, udp } => (
            family,
            cmd::SET_CONFIG,
            GENL_VERSION,
            vec![
                attr_u32(attr::TIMEOUT_TCP, *tcp)?,
                attr_u32(attr::TIMEOUT_TCP_FIN, *tcp_fin)?,
                attr_u32(attr::TIMEOUT_UDP, *udp)?,
            ],
        ),
    };
    let genl = GenlmsghdrBuilder::<u8, u16>::default()
        .cmd(command)
        .version(version)
        .attrs(attrs.into_iter().collect::<GenlBuffer<_, _>>())
        .build()
        .map_err(build_err)?;
    // Dumps are answered by NLMSG_DONE; every other request asks for an ACK so
    // that a batch can be matched reply by reply.
    let flags = if req.is_dump() { NlmF::REQUEST | NlmF::DUMP } else { NlmF::REQUEST | NlmF::ACK };
    let msg = NlmsghdrBuilder::default()
        .nl_type(nl_type)
        .nl_flags(flags)
        .nl_seq(seq)
        .nl_pid(0)
        .nl_payload(NlPayload::Payload(genl))
        .build()
        .map_err(build_err)?;
    let mut buf = Cursor::new(vec![0; msg.padded_size()]);
    msg.to_bytes(&mut buf).map_err(build_err)?;
    Ok(buf.into_inner())
}

/// One message from the kernel, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// An ACK (error 0) or an error (`-errno`) for the request with this sequence number.
    Ack {
        seq: u32,
        errno: i32,
        message: Option<String>,
    },
    /// The end of a dump.
    Done {
        seq: u32,
    },
    Family {
        seq: u32,
        id: u16,
    },
    Info {
        seq: u32,
        version: u32,
    },
    Service {
        seq: u32,
        service: VirtualServer,
    },
    Dest {
        seq: u32,
        dest: RealServer,
    },
    /// Something we did not ask for (ignored, counted in logs).
    Other {
        seq: u32,
        nl_type: u16,
    },
}

impl Reply {
    pub fn seq(&self) -> u32 {
        match self {
            Reply::Ack { seq, .. }
            | Reply::Done { seq }
            | Reply::Family { seq, .. }
            | Reply::Info { seq, .. }
            | Reply::Service { seq, .. }
            | Reply::Dest { seq, .. }
            | Reply::Other { seq, .. } => *seq,
        }
    }
}

/// Splits a receive buffer into netlink messages and decodes each.
/// `family` tells IPVS messages from controller replies.
pub fn parse(buf: &[u8], family: u16) -> Result<Vec<Reply>, MessageError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[offset], buf[offset + 1], buf[offset + 2], buf[offset + 3]]) as usize;
        if len < 16 || offset + len > buf.len() {
            return Err(MessageError::Parse(format!("bad nlmsg_len {len} at offset {offset}")));
        }
        let msg = &buf[offset..offset + len];
        out.push(parse_one(msg, family)?);
        offset += (len + 3) & !3;
    }
    Ok(out)
}

fn parse_one(msg: &[u8], family: u16) -> Result<Reply, MessageError> {
    let nl_type = u16::from_ne_bytes([msg[4], msg[5]]);
    let seq = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
    if nl_type == u16::from(Nlmsg::Error) {
        // struct nlmsgerr { int error; struct nlmsghdr msg; } + extended-ACK attributes.
        if msg.len() < 20 {
            return Err(MessageError::Parse("short NLMSG_ERROR".into()));
        }
        let errno = i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]]);
        return Ok(Reply::Ack { seq, errno: -errno, message: ext_ack_message(msg) });
    }
    if nl_type == u16::from(Nlmsg::Done) {
        return Ok(Reply::Done { seq });
    }
    let parsed = GenlMessage::from_bytes(&mut Cursor::new(msg)).map_err(parse_err)?;
    let Some(genl) = parsed.get_payload() else { return Ok(Reply::Other { seq, nl_type }) };
    let handle = genl.attrs().get_attr_handle();
    if nl_type == u16::from(GenlId::Ctrl) {
        let id = handle
            .get_attr_payload_as::<u16>(u16::from(CtrlAttr::FamilyId))
            .map_err(|_| MessageError::Missing { what: "genl family reply", attr: u16::from(CtrlAttr::FamilyId) })?;
        return Ok(Reply::Family { seq, id });
    }
    if nl_type != family {
        return Ok(Reply::Other { seq, nl_type });
    }
    match *genl.cmd() {
        // Dumps answer with the NEW_* commands.
        cmd::NEW_SERVICE | cmd::GET_SERVICE => {
            let nested = handle
                .get_nested_attributes::<u16>(attr::SERVICE)
                .map_err(|_| MessageError::Missing { what: "service reply", attr: attr::SERVICE })?;
            Ok(Reply::Service { seq, service: parse_service(&nested)? })
        }
        cmd::NEW_DEST | cmd::GET_DEST => {
            let nested = handle
                .get_nested_attributes::<u16>(attr::DEST)
                .map_err(|_| MessageError::Missing { what: "destination reply", attr: attr::DEST })?;
            Ok(Reply::Dest { seq, dest: parse_dest(&nested)? })
        }
        cmd::GET_INFO | 14 => {
            let version = handle
                .get_attr_payload_as::<u32>(info::VERSION)
                .map_err(|_| MessageError::Missing { what: "info reply", attr: info::VERSION })?;
            Ok(Reply::Info { seq, version })
        }
        _ => Ok(Reply::Other { seq, nl_type }),
    }
}

/// `NLMSGERR_ATTR_MSG` of an extended ACK, when the kernel sent one.
fn ext_ack_message(msg: &[u8]) -> Option<String> {
    let flags = u16::from_ne_bytes([msg[6], msg[7]]);
    // NLM_F_ACK_TLVS (0x200); with NETLINK_CAP_ACK (flag NLM_F_CAPPED 0x100) only the request header is echoed.
    if flags & 0x200 == 0 {
        return None;
    }
    let echoed =
        if flags & 0x100 != 0 { 16 } else { u32::from_ne_bytes([msg[20], msg[21], msg[22], msg[23]]) as usize };
    let mut off = 20 + ((echoed + 3) & !3);
    while off + 4 <= msg.len() {
        let len = u16::from_ne_bytes([msg[off], msg[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([msg[off + 2], msg[off + 3]]) & 0x3fff;
        if len < 4 || off + len > msg.len() {
            break;
        }
        if kind == 1 {
            let s = &msg[off + 4..off + len];
            let s = s.split(|b| *b == 0).next().unwrap_or(s);
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        off += (len + 3) & !3;
    }
    None
}

type Handle<'a> = neli::genl::GenlAttrHandle<'a, u16>;

fn payload<'a>(h: &'a Handle<'_>, kind: u16, what: &'static str) -> Result<&'a [u8], MessageError> {
    h.get_attribute(kind).map(|a| a.nla_payload().as_ref()).ok_or(MessageError::Missing { what, attr: kind })
}

fn u16_of(b: &[u8]) -> Result<u16, MessageError> {
    b.get(..2).map(|s| u16::from_ne_bytes([s[0], s[1]])).ok_or_else(|| MessageError::Parse("short u16".into()))
}

fn u32_of(b: &[u8]) -> Result<u32, MessageError> {
    b.get(..4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| MessageError::Parse("short u32".into()))
}

fn port_of(b: &[u8]) -> Result<u16, MessageError> {
    b.get(..2).map(|s| u16::from_be_bytes([s[0], s[1]])).ok_or_else(|| MessageError::Parse("short port".into()))
}

fn addr_of(b: &[u8], af_value: u16) -> Result<IpAddr, MessageError> {
    if af_value == libc::AF_INET as u16 {
        let s = b.get(..4).ok_or_else(|| MessageError::Parse("short IPv4 address".into()))?;
        Ok(IpAddr::V4(Ipv4Addr::new(s[0], s[1], s[2], s[3])))
    } else if af_value == libc::AF_INET6 as u16 {
        let s: [u8; 16] = b
            .get(..16)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| MessageError::Parse("short IPv6 address".into()))?;
        Ok(IpAddr::V6(Ipv6Addr::from(s)))
    } else {
        Err(MessageError::Unsupported { what: "address family", value: u64::from(af_value) })
    }
}

fn protocol_of(n: u16) -> Result<Protocol, MessageError> {
    Protocol::ALL
        .into_iter()
        .find(|p| u16::from(p.number()) == n)
        .ok_or(MessageError::Unsupported { what: "protocol", value: u64::from(n) })
}

/// A dumped service. Firewall-mark services (no address) are reported as
/// `Unsupported` and skipped by the caller: we never create them.
fn parse_service(h: &Handle<'_>) -> Result<VirtualServer, MessageError> {
    const WHAT: &str = "service";
    let af_value = u16_of(payload(h, svc::AF, WHAT)?)?;
    if h.get_attribute(svc::FWMARK).is_some_and(|a| u32_of(a.nla_payload().as_ref()).unwrap_or(0) != 0) {
        return Err(MessageError::Unsupported { what: "firewall-mark service", value: 0 });
    }
    let protocol = protocol_of(u16_of(payload(h, svc::PROTOCOL, WHAT)?)?)?;
    let addr = addr_of(payload(h, svc::ADDR, WHAT)?, af_value)?;
    let port = port_of(payload(h, svc::PORT, WHAT)?)?;
    let sched = payload(h, svc::SCHED_NAME, WHAT)?;
    let scheduler = String::from_utf8_lossy(sched.split(|b| *b == 0).next().unwrap_or(sched)).into_owned();
    let flags = u32_of(payload(h, svc::FLAGS, WHAT)?)? & !SVC_F_HASHED;
    let timeout = u32_of(payload(h, svc::TIMEOUT, WHAT)?)?;
    let netmask = u32_of(payload(h, svc::NETMASK, WHAT)?)?;
    Ok(VirtualServer { key: ServiceKey { protocol, addr, port }, scheduler, flags, timeout, netmask })
}

fn parse_dest(h: &Handle<'_>) -> Result<RealServer, MessageError> {
    const WHAT: &str = "destination";
    let opt_u32 = |kind| h.get_attribute(kind).map_or(Ok(0), |a| u32_of(a.nla_payload().as_ref()));
    let raw_addr = payload(h, dest::ADDR, WHAT)?;
    // IPVS_DEST_ATTR_ADDR_FAMILY exists since 4.6; before it the service's family applies.
    let af_value = match h.get_attribute(dest::ADDR_FAMILY) {
        Some(a) => u16_of(a.nla_payload().as_ref())?,
        None if raw_addr.get(4..).is_none_or(|rest| rest.iter().all(|b| *b == 0)) => libc::AF_INET as u16,
        None => libc::AF_INET6 as u16,
    };
    Ok(RealServer {
        addr: addr_of(raw_addr, af_value)?,
        port: port_of(payload(h, dest::PORT, WHAT)?)?,
        weight: u32_of(payload(h, dest::WEIGHT, WHAT)?)?,
        fwd_method: u32_of(payload(h, dest::FWD_METHOD, WHAT)?)? & 0x7,
        upper_threshold: opt_u32(dest::U_THRESH)?,
        lower_threshold: opt_u32(dest::L_THRESH)?,
        active_conns: opt_u32(dest::ACTIVE_CONNS)?,
        inactive_conns: opt_u32(dest::INACT_CONNS)?,
        persistent_conns: opt_u32(dest::PERSIST_CONNS)?,
    })
}

#[cfg(test)]
mod tests;
