//! The nf_tables netlink socket: sending batches, reading dumps.
//!
//! A netlink socket belongs to the network namespace of the thread that
//! opens it; callers open it inside `NetNamespace::run`.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};

use super::nft;
use super::wire::{self, Messages};

/// A failed request: the errno and, for a batch, which message failed.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("netlink socket")]
    Io(#[from] io::Error),
    #[error("the kernel refused message {seq} ({what})")]
    Refused {
        seq: u32,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("malformed netlink reply")]
    Malformed,
}

impl NlError {
    /// The errno, when the kernel answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Io(e) => e.raw_os_error(),
            NlError::Refused { source, .. } => source.raw_os_error(),
            NlError::Malformed => None,
        }
    }
}

/// One connection to nf_tables.
#[derive(Debug)]
pub struct Conn {
    sock: Socket,
    seq: u32,
    port: u32,
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: fd is an open socket; the option value is a plain int of the given size.
    let r = unsafe {
        libc::setsockopt(fd, level, opt, (&v as *const i32).cast(), std::mem::size_of::<i32>() as libc::socklen_t)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

impl Conn {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> io::Result<Conn> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        let port = sock.bind_auto()?.port_number();
        sock.connect(&NlAddr::new(0, 0))?;
        // Acknowledgements without the request echoed: a refused 48 KiB
        // element message would otherwise come back whole.
        sock.set_cap_ack(true)?;
        sock.set_ext_ack(true)?;
        let fd = sock.as_raw_fd();
        // A full sync at 10,000 Services is a batch of several MB: the kernel
        // refuses a message larger than the send buffer. As root, force it
        // (what nft does); otherwise keep the default and let big batches fail.
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 64 << 20);
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
        // Never hang on a kernel that does not answer (it always should).
        let tv = libc::timeval { tv_sec: 30, tv_usec: 0 };
        // SAFETY: as above, with a timeval.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(Conn { sock, seq: 1, port })
    }

    /// The socket's netlink port id: the kernel names it as the sender of
    /// the `NEWGEN` event of every transaction committed through it.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// A socket subscribed to nf_tables change events (`nft monitor`).
    pub fn monitor() -> io::Result<Socket> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.add_membership(nft::NFNLGRP_NFTABLES)?;
        let _ = setsockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
        Ok(sock)
    }

    /// The next sequence number to build a request with.
    pub fn seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1 << 20);
        s
    }

    /// Sends a finished batch and waits for the kernel's answer to every
    /// message. `names` says what each sequence number was (for errors).
    pub fn apply(&mut self, bytes: &[u8], last: Option<u32>, names: &dyn Fn(u32) -> String) -> Result<(), NlError> {
        let Some(last) = last else {
            return Ok(());
        };
        self.sock.send(bytes, 0)?;
        let mut first_error: Option<NlError> = None;
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            for m in Messages::new(&data) {
                if let Some((code, seq)) = m.error() {
                    if code != 0 && first_error.is_none() {
                        first_error = Some(NlError::Refused {
                            seq,
                            what: names(seq),
                            source: io::Error::from_raw_os_error(-code),
                        });
                    }
                    if seq == last {
                        return match first_error {
                            Some(e) => Err(e),
                            None => Ok(()),
                        };
                    }
                }
            }
        }
    }

    /// Sends a dump request and collects every reply message's bytes.
    pub fn dump(&mut self, request: &[u8]) -> Result<Vec<Vec<u8>>, NlError> {
        let seq = Messages::new(request).next().map(|m| m.seq).ok_or(NlError::Malformed)?;
        self.sock.send(request, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut done = false;
            for m in Messages::new(&data).filter(|m| m.seq == seq) {
                if m.msg_type == wire::NLMSG_DONE {
                    done = true;
                } else if let Some((code, _)) = m.error() {
                    if code != 0 {
                        return Err(NlError::Io(io::Error::from_raw_os_error(-code)));
                    }
                    done = true;
                }
            }
            out.push(data);
            if done {
                return Ok(out);
            }
        }
    }

    /// A request answered by one message or an error (`GETTABLE`, `GETGEN`).
    pub fn request(&mut self, request: &[u8]) -> Result<Vec<u8>, NlError> {
        let seq = Messages::new(request).next().map(|m| m.seq).ok_or(NlError::Malformed)?;
        self.sock.send(request, 0)?;
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let Some(m) = Messages::new(&data).find(|m| m.seq == seq) else { continue };
            if let Some((code, _)) = m.error()
                && code != 0
            {
                return Err(NlError::Io(io::Error::from_raw_os_error(-code)));
            }
            return Ok(data);
        }
    }

    /// The namespace's ruleset generation (moves with every commit, by anyone).
    pub fn generation(&mut self) -> Result<u32, NlError> {
        let seq = self.seq();
        let data = self.request(&nft::getgen_request(seq))?;
        Messages::new(&data).find_map(|m| nft::parse_gen(&m)).map(|g| g.0).ok_or(NlError::Malformed)
    }

    /// Waits at most `timeout` for the socket to become readable.
    pub fn readable(sock: &Socket, timeout: Duration) -> bool {
        let mut fds = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut fds, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        r > 0
    }
}

/// Whether a failure means nf_tables is missing (no module, no permission).
pub fn is_unavailable(e: &NlError) -> bool {
    matches!(e.errno(), Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT | libc::EPERM | libc::EACCES))
}
