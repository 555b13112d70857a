//! Talking to IPVS: one generic netlink socket, requests in pipelined batches.
//!
//! A socket belongs to the network namespace it was created in, so
//! [`NetlinkIpvs::connect`] must run on a thread inside the target namespace
//! (`NetNamespace::run`); afterwards it may be used from any thread.
//!
//! Writes are sent in batches: many requests, each with `NLM_F_ACK` and its
//! own sequence number, go out in one `send`, and the ACKs are matched back
//! by sequence number. The kernel handles the messages of one buffer in
//! order and keeps going after a failed one, so every failure is reported.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;

use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;

use crate::message::{self, RealServer, Reply, Request, ServiceKey, VirtualServer};

/// Requests per `send`: ~150 bytes each, their ACKs (36 bytes with
/// `NETLINK_CAP_ACK`) fit the default receive buffer many times over.
const BATCH: usize = 256;
const RECV_BUFFER: usize = 256 * 1024;

/// Errors talking to IPVS.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kernel has no IPVS genl family (no `ip_vs` module, `CONFIG_IP_VS` unset).
    #[error("IPVS unavailable: the kernel has no IPVS generic netlink family (load the ip_vs module)")]
    Unavailable,
    #[error("{operation}")]
    Io {
        operation: String,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request.
    #[error("{operation}: {}{}", io::Error::from_raw_os_error(*errno), message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel { operation: String, errno: i32, message: Option<String> },
    #[error("{operation}")]
    Message {
        operation: String,
        #[source]
        source: message::MessageError,
    },
    /// Several requests of a batch failed; the first is the source.
    #[error("{failed} of {total} IPVS operations failed, the first")]
    Batch {
        failed: usize,
        total: usize,
        #[source]
        first: Box<ClientError>,
    },
}

impl ClientError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            ClientError::Kernel { errno, .. } => Some(*errno),
            ClientError::Batch { first, .. } => first.errno(),
            _ => None,
        }
    }
}

/// What the reconciler needs from IPVS; [`crate::fake::FakeIpvs`] is the test double.
pub trait Ipvs: Send {
    /// `ipvsadm -Ln`: every virtual server (ours and others').
    fn services(&mut self) -> Result<Vec<VirtualServer>, ClientError>;
    /// One virtual server, `None` when the kernel has no such one.
    fn service(&mut self, key: &ServiceKey) -> Result<Option<VirtualServer>, ClientError>;
    /// `ipvsadm -Ln -t VIP:PORT`: the real servers of one virtual server.
    fn dests(&mut self, key: &ServiceKey) -> Result<Vec<RealServer>, ClientError>;
    /// Every virtual server's real servers in one go, when the
    /// implementation can (`None`: ask [`Ipvs::dests`] per virtual server).
    fn all_dests(&mut self) -> Option<BTreeMap<ServiceKey, Vec<RealServer>>> {
        None
    }
    /// Runs write requests in order.
    fn execute(&mut self, requests: &[Request]) -> Result<(), ClientError>;
}

/// IPVS over a real generic netlink socket.
pub struct NetlinkIpvs {
    socket: NlSocket,
    family: u16,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for NetlinkIpvs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkIpvs").field("fd", &self.socket.as_raw_fd()).field("family", &self.family).finish()
    }
}

fn io_err(operation: &str) -> impl FnOnce(io::Error) -> ClientError + '_ {
    move |source| ClientError::Io { operation: operation.to_string(), source }
}

/// `NETLINK_CAP_ACK`: ACKs echo only the request's header, not the whole request.
const NETLINK_CAP_ACK: libc::c_int = 10;
const SOL_NETLINK: libc::c_int = 270;

impl NetlinkIpvs {
    /// Opens a socket in the calling thread's namespace and resolves the
    /// `IPVS` family. ENOENT from the controller means IPVS is unavailable.
    pub fn connect() -> Result<Self, ClientError> {
        let socket = NlSocket::connect(NlFamily::Generic, None, Groups::empty())
            .map_err(io_err("open generic netlink socket"))?;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_CAP_ACK,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io_err("setsockopt NETLINK_CAP_ACK")(io::Error::last_os_error()));
        }
        // Extended ACKs carry the kernel's reason for an EINVAL; best effort.
        let _ = socket.enable_ext_ack(true);
        let mut client = NetlinkIpvs { socket, family: 0, seq: 0, buf: vec![0; RECV_BUFFER] };
        let replies = client.round_trip(&Request::ResolveFamily)?;
        let id = replies.iter().find_map(|r| match r {
            Reply::Family { id, .. } => Some(*id),
            _ => None,
        });
        match id {
            Some(id) => {
                client.family = id;
                Ok(client)
            }
            None => Err(ClientError::Unavailable),
        }
    }

    /// The IPVS genl family id the kernel assigned.
    pub fn family(&self) -> u16 {
        self.family
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&self, bytes: &[u8], operation: &str) -> Result<(), ClientError> {
        self.socket.send(bytes, Msg::empty()).map_err(io_err(operation))?;
        Ok(())
    }

    fn recv(&mut self, operation: &str) -> Result<Vec<Reply>, ClientError> {
        let (n, _) = self.socket.recv(&mut self.buf[..], Msg::empty()).map_err(io_err(operation))?;
        message::parse(&self.buf[..n], self.family)
            .map_err(|source| ClientError::Message { operation: operation.to_string(), source })
    }

    /// Sends one request and collects its replies: up to its ACK (or error),
    /// or up to `NLMSG_DONE` for a dump.
    fn round_trip(&mut self, req: &Request) -> Result<Vec<Reply>, ClientError> {
        let operation = req.describe();
        let seq = self.next_seq();
        let bytes = message::build(req, self.family, seq)
            .map_err(|source| ClientError::Message { operation: operation.clone(), source })?;
        self.send(&bytes, &operation)?;
        let mut out = Vec::new();
        loop {
            for reply in self.recv(&operation)? {
                if reply.seq() != seq {
                    continue; // a late reply to an abandoned request
                }
                match reply {
                    Reply::Ack { errno: 0, .. } if !req.is_dump() => return Ok(out),
                    Reply::Ack { errno: 0, .. } => {}
                    Reply::Ack { errno, message, .. } => {
                        if matches!(req, Request::ResolveFamily) && errno == libc::ENOENT {
                            return Err(ClientError::Unavailable);
                        }
                        return Err(ClientError::Kernel { operation, errno, message });
                    }
                    Reply::Done { .. } => return Ok(out),
                    other => out.push(other),
                }
            }
        }
    }

    /// The IPVS version (`IPVS_INFO_ATTR_VERSION`, e.g. 0x010201 for 1.2.1).
    pub fn version(&mut self) -> Result<u32, ClientError> {
        let replies = self.round_trip(&Request::GetInfo)?;
        Ok(replies
            .iter()
            .find_map(|r| match r {
                Reply::Info { version, .. } => Some(*version),
                _ => None,
            })
            .unwrap_or(0))
    }
}

impl Ipvs for NetlinkIpvs {
    fn services(&mut self) -> Result<Vec<VirtualServer>, ClientError> {
        Ok(self
            .round_trip(&Request::DumpServices)?
            .into_iter()
            .filter_map(|r| match r {
                Reply::Service { service, .. } => Some(service),
                _ => None,
            })
            .collect())
    }

    fn service(&mut self, key: &ServiceKey) -> Result<Option<VirtualServer>, ClientError> {
        match self.round_trip(&Request::GetService(*key)) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                Reply::Service { service, .. } => Some(service),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn dests(&mut self, key: &ServiceKey) -> Result<Vec<RealServer>, ClientError> {
        Ok(self
            .round_trip(&Request::DumpDests(*key))?
            .into_iter()
            .filter_map(|r| match r {
                Reply::Dest { dest, .. } => Some(dest),
                _ => None,
            })
            .collect())
    }

    /// From `/proc/thread-self/net/ip_vs` (see [`crate::procfs`]): only
    /// meaningful on a thread inside the socket's namespace, which is where
    /// syncs run.
    fn all_dests(&mut self) -> Option<BTreeMap<ServiceKey, Vec<RealServer>>> {
        crate::procfs::read()
    }

    fn execute(&mut self, requests: &[Request]) -> Result<(), ClientError> {
        let mut failures: Vec<ClientError> = Vec::new();
        for chunk in requests.chunks(BATCH) {
            let mut pending: BTreeMap<u32, &Request> = BTreeMap::new();
            let mut bytes = Vec::with_capacity(chunk.len() * 160);
            for req in chunk {
                let seq = self.next_seq();
                let msg = message::build(req, self.family, seq)
                    .map_err(|source| ClientError::Message { operation: req.describe(), source })?;
                bytes.extend_from_slice(&msg);
                pending.insert(seq, req);
            }
            self.send(&bytes, "send IPVS batch")?;
            while !pending.is_empty() {
                for reply in self.recv("receive IPVS acknowledgements")? {
                    if let Reply::Ack { seq, errno, message } = reply
                        && let Some(req) = pending.remove(&seq)
                        && errno != 0
                    {
                        failures.push(ClientError::Kernel { operation: req.describe(), errno, message });
                    }
                }
            }
        }
        match failures.len() {
            0 => Ok(()),
            1 => Err(failures.remove(0)),
            failed => Err(ClientError::Batch { failed, total: requests.len(), first: Box::new(failures.remove(0)) }),
        }
    }
}
