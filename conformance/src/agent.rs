//! The agent: one child process per lab host, running inside the host's
//! network namespace. It serves echo (TCP, UDP, SCTP) and makes probes on
//! request, answering JSON lines on stdin/stdout.
//!
//! The runner starts it by re-executing its own binary with the hidden
//! subcommand [`AGENT_SUBCOMMAND`]; the agent enters the namespace with
//! `setns(2)` before it creates any thread or socket, so every socket it
//! opens lives there. It asks the kernel to kill it when the runner dies
//! (`PR_SET_PDEATHSIG`), so no echo server outlives a run.
//!
//! Echo protocol: a client sends a line; the server answers
//! `<host name> <peer address it saw> <local port>\n` (TCP and SCTP: one
//! answer per line on the same connection; UDP: one datagram per datagram).

use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol as SockProtocol, SockAddr, Socket, Type};

use crate::addresses::canonical;

/// The hidden subcommand that turns the runner binary into an agent.
pub const AGENT_SUBCOMMAND: &str = "__swy-lab-agent";

/// A transport protocol as probes and echo servers use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn core(self) -> proxy_core::Protocol {
        match self {
            Proto::Tcp => proxy_core::Protocol::Tcp,
            Proto::Udp => proxy_core::Protocol::Udp,
            Proto::Sctp => proxy_core::Protocol::Sctp,
        }
    }
}

/// Echo ports per protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoPorts {
    pub tcp: BTreeSet<u16>,
    pub udp: BTreeSet<u16>,
    pub sctp: BTreeSet<u16>,
}

impl EchoPorts {
    pub fn insert(&mut self, proto: Proto, port: u16) {
        match proto {
            Proto::Tcp => self.tcp.insert(port),
            Proto::Udp => self.udp.insert(port),
            Proto::Sctp => self.sctp.insert(port),
        };
    }
}

/// A request to an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AgentRequest {
    /// `count` fresh connections (or datagrams from fresh sockets) to `dst`.
    Probe {
        proto: Proto,
        dst: SocketAddr,
        /// Bind to this source address.
        src_ip: Option<IpAddr>,
        /// Bind to this source port (UDP "same flow" probes).
        src_port: Option<u16>,
        count: u32,
        timeout_ms: u64,
    },
    /// Opens a TCP connection, exchanges one line and keeps it under `id`.
    Open { id: String, proto: Proto, dst: SocketAddr, src_ip: Option<IpAddr>, timeout_ms: u64 },
    /// Exchanges one more line on a held connection.
    Exchange { id: String, timeout_ms: u64 },
    /// Closes every held connection.
    CloseAll,
}

/// What one attempt observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// An echo server answered.
    Reply { host: String, peer: SocketAddr },
    /// Connection refused (TCP RST, ICMP port unreachable).
    Refused,
    /// Nothing came back before the timeout.
    Timeout,
    /// ICMP host/network unreachable or another routing error.
    Unreachable { detail: String },
    /// Anything else (a broken reply, a local error).
    Error { detail: String },
}

/// One attempt and how long it took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    #[serde(flatten)]
    pub outcome: Outcome,
    pub elapsed_us: u64,
}

/// An agent's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AgentResponse {
    Attempts { attempts: Vec<Attempt> },
    Ok,
    Error { message: String },
}

/// Command-line arguments of the agent subcommand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentArgs {
    pub name: String,
    pub netns: Option<PathBuf>,
    pub ports: EchoPorts,
}

impl AgentArgs {
    /// The arguments after the subcommand.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = vec!["--name".to_string(), self.name.clone()];
        if let Some(ns) = &self.netns {
            out.push("--netns".into());
            out.push(ns.display().to_string());
        }
        let join = |s: &BTreeSet<u16>| s.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        for (flag, set) in [("--tcp", &self.ports.tcp), ("--udp", &self.ports.udp), ("--sctp", &self.ports.sctp)] {
            if !set.is_empty() {
                out.push(flag.into());
                out.push(join(set));
            }
        }
        out
    }

    pub fn parse(args: &[String]) -> Result<AgentArgs, String> {
        let mut out = AgentArgs::default();
        let mut it = args.iter();
        let ports = |v: Option<&String>| -> Result<BTreeSet<u16>, String> {
            let v = v.ok_or("missing value")?;
            v.split(',').filter(|s| !s.is_empty()).map(|p| p.parse().map_err(|e| format!("port {p:?}: {e}"))).collect()
        };
        while let Some(a) = it.next() {
            match a.as_str() {
                "--name" => out.name = it.next().ok_or("--name needs a value")?.clone(),
                "--netns" => out.netns = Some(PathBuf::from(it.next().ok_or("--netns needs a value")?)),
                "--tcp" => out.ports.tcp = ports(it.next())?,
                "--udp" => out.ports.udp = ports(it.next())?,
                "--sctp" => out.ports.sctp = ports(it.next())?,
                other => return Err(format!("unknown agent argument {other:?}")),
            }
        }
        if out.name.is_empty() {
            return Err("--name is required".into());
        }
        Ok(out)
    }
}

/// Runs the agent: enters the namespace, starts echo servers, prints
/// `ready`, then serves requests from stdin until it closes.
pub fn run(args: AgentArgs) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    if let Some(ns) = &args.netns {
        // Still single-threaded here: every thread spawned below inherits the namespace.
        let f = std::fs::File::open(ns)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    }
    for &port in &args.ports.tcp {
        let l = listen_stream(port, None)?;
        let name = args.name.clone();
        std::thread::spawn(move || serve_stream(l, name, port));
    }
    for &port in &args.ports.sctp {
        let l = listen_stream(port, Some(SockProtocol::from(libc::IPPROTO_SCTP)))?;
        let name = args.name.clone();
        std::thread::spawn(move || serve_stream(l, name, port));
    }
    for &port in &args.ports.udp {
        let s = udp_socket(port)?;
        let name = args.name.clone();
        std::thread::spawn(move || serve_udp(s, name, port));
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut held: HashMap<String, BufReader<TcpStream>> = HashMap::new();
    for line in io::stdin().lock().lines() {
        let line = line?;
        let response = match serde_json::from_str::<AgentRequest>(&line) {
            Ok(req) => handle(req, &mut held),
            Err(e) => AgentResponse::Error { message: format!("bad request: {e}") },
        };
        let text = serde_json::to_string(&response)
            .unwrap_or_else(|e| format!("{{\"status\":\"error\",\"message\":\"{e}\"}}"));
        writeln!(out, "{text}")?;
        out.flush()?;
    }
    Ok(())
}

fn any_addr(port: u16) -> SockAddr {
    SockAddr::from(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))
}

/// A dual-stack listening socket (IPv4 peers appear as mapped addresses).
fn listen_stream(port: u16, protocol: Option<SockProtocol>) -> io::Result<TcpListener> {
    let s = dual_stack(Type::STREAM, protocol, port)?;
    s.listen(128)?;
    // An SCTP one-to-one socket accepts and streams like TCP; std's TcpListener
    // only issues accept(2)/read(2)/write(2) on it.
    Ok(TcpListener::from(s))
}

fn udp_socket(port: u16) -> io::Result<UdpSocket> {
    Ok(UdpSocket::from(dual_stack(Type::DGRAM, None, port)?))
}

/// A socket bound to every address: IPv6 with IPv4-mapped peers, or plain
/// IPv4 on a kernel without IPv6.
fn dual_stack(ty: Type, protocol: Option<SockProtocol>, port: u16) -> io::Result<Socket> {
    let v6 = Socket::new(Domain::IPV6, ty, protocol).and_then(|s| {
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&any_addr(port))?;
        Ok(s)
    });
    match v6 {
        Ok(s) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let s = Socket::new(Domain::IPV4, ty, protocol)?;
            s.set_reuse_address(true)?;
            s.bind(&SockAddr::from(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port)))?;
            Ok(s)
        }
        Err(e) => Err(e),
    }
}

fn answer(name: &str, peer: SocketAddr, port: u16) -> String {
    let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
    format!("{name} {peer} {port}\n")
}

fn serve_stream(listener: TcpListener, name: String, port: u16) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.clone();
        std::thread::spawn(move || {
            let Ok(peer) = conn.peer_addr() else { return };
            let Ok(writer) = conn.try_clone() else { return };
            let mut writer = writer;
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                if writer.write_all(answer(&name, peer, port).as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
        });
    }
}

fn serve_udp(socket: UdpSocket, name: String, port: u16) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((_, peer)) = socket.recv_from(&mut buf) else { continue };
        let _ = socket.send_to(answer(&name, peer, port).as_bytes(), peer);
    }
}

fn handle(req: AgentRequest, held: &mut HashMap<String, BufReader<TcpStream>>) -> AgentResponse {
    match req {
        AgentRequest::Probe { proto, dst, src_ip, src_port, count, timeout_ms } => {
            let timeout = Duration::from_millis(timeout_ms.max(1));
            let attempts = (0..count).map(|_| timed(|| probe_once(proto, dst, src_ip, src_port, timeout))).collect();
            AgentResponse::Attempts { attempts }
        }
        AgentRequest::Open { id, proto, dst, src_ip, timeout_ms } => {
            let timeout = Duration::from_millis(timeout_ms.max(1));
            let mut conn = None;
            let attempt = timed(|| match connect_stream(proto, dst, src_ip, None, timeout) {
                Ok(stream) => {
                    let mut reader = BufReader::new(stream);
                    let outcome = exchange(&mut reader);
                    conn = Some(reader);
                    outcome
                }
                Err(e) => classify_error(&e),
            });
            if let Some(c) = conn {
                held.insert(id, c);
            }
            AgentResponse::Attempts { attempts: vec![attempt] }
        }
        AgentRequest::Exchange { id, timeout_ms } => match held.get_mut(&id) {
            None => AgentResponse::Error { message: format!("no held connection {id:?}") },
            Some(reader) => {
                let _ = reader.get_ref().set_read_timeout(Some(Duration::from_millis(timeout_ms.max(1))));
                let attempt = timed(|| exchange(reader));
                AgentResponse::Attempts { attempts: vec![attempt] }
            }
        },
        AgentRequest::CloseAll => {
            held.clear();
            AgentResponse::Ok
        }
    }
}

fn timed(f: impl FnOnce() -> Outcome) -> Attempt {
    let start = Instant::now();
    let outcome = f();
    Attempt { outcome, elapsed_us: start.elapsed().as_micros() as u64 }
}

fn domain_of(dst: &SocketAddr) -> Domain {
    if dst.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 }
}

fn bind_source(s: &Socket, dst: &SocketAddr, src_ip: Option<IpAddr>, src_port: Option<u16>) -> io::Result<()> {
    if src_ip.is_none() && src_port.is_none() {
        return Ok(());
    }
    let ip =
        src_ip.unwrap_or(if dst.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) });
    if src_port.is_some() {
        s.set_reuse_address(true)?;
    }
    s.bind(&SockAddr::from(SocketAddr::new(ip, src_port.unwrap_or(0))))
}

fn connect_stream(
    proto: Proto,
    dst: SocketAddr,
    src_ip: Option<IpAddr>,
    src_port: Option<u16>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let protocol = match proto {
        Proto::Sctp => Some(SockProtocol::from(libc::IPPROTO_SCTP)),
        _ => Some(SockProtocol::TCP),
    };
    let s = Socket::new(domain_of(&dst), Type::STREAM, protocol)?;
    bind_source(&s, &dst, src_ip, src_port)?;
    s.connect_timeout(&SockAddr::from(dst), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // SAFETY: the descriptor is a connected stream socket we own; TcpStream
    // only reads and writes it (SCTP one-to-one sockets stream like TCP).
    Ok(unsafe { TcpStream::from_raw_fd(s.into_raw_fd()) })
}

fn exchange(reader: &mut BufReader<TcpStream>) -> Outcome {
    if let Err(e) = reader.get_mut().write_all(b"probe\n") {
        return classify_error(&e);
    }
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Outcome::Error { detail: "connection closed before the answer".into() },
        Ok(_) => parse_answer(&line),
        Err(e) => classify_error(&e),
    }
}

fn probe_once(
    proto: Proto,
    dst: SocketAddr,
    src_ip: Option<IpAddr>,
    src_port: Option<u16>,
    timeout: Duration,
) -> Outcome {
    match proto {
        Proto::Tcp | Proto::Sctp => match connect_stream(proto, dst, src_ip, src_port, timeout) {
            Ok(stream) => {
                let mut reader = BufReader::new(stream);
                exchange(&mut reader)
            }
            Err(e) => classify_error(&e),
        },
        Proto::Udp => udp_once(dst, src_ip, src_port, timeout).unwrap_or_else(|e| classify_error(&e)),
    }
}

fn udp_once(dst: SocketAddr, src_ip: Option<IpAddr>, src_port: Option<u16>, timeout: Duration) -> io::Result<Outcome> {
    let s = Socket::new(domain_of(&dst), Type::DGRAM, None)?;
    bind_source(&s, &dst, src_ip, src_port)?;
    s.connect(&SockAddr::from(dst))?;
    let s = UdpSocket::from(s);
    s.set_read_timeout(Some(timeout))?;
    s.send(b"probe\n")?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf)?;
    Ok(parse_answer(&String::from_utf8_lossy(&buf[..n])))
}

/// Parses an echo answer: `<host> <peer> <port>`.
pub fn parse_answer(line: &str) -> Outcome {
    let mut parts = line.split_whitespace();
    let (Some(host), Some(peer)) = (parts.next(), parts.next()) else {
        return Outcome::Error { detail: format!("unparsable answer {line:?}") };
    };
    match peer.parse::<SocketAddr>() {
        Ok(peer) => Outcome::Reply { host: host.to_string(), peer },
        Err(_) => Outcome::Error { detail: format!("unparsable peer in answer {line:?}") },
    }
}

fn classify_error(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Timeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            Outcome::Unreachable { detail: e.to_string() }
        }
        io::ErrorKind::ConnectionReset => Outcome::Error { detail: format!("connection reset: {e}") },
        _ => Outcome::Error { detail: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let mut ports = EchoPorts::default();
        ports.insert(Proto::Tcp, 80);
        ports.insert(Proto::Tcp, 8080);
        ports.insert(Proto::Udp, 53);
        let args = AgentArgs { name: "a1".into(), netns: Some("/run/netns/x".into()), ports };
        assert_eq!(AgentArgs::parse(&args.to_args()), Ok(args));
        assert!(AgentArgs::parse(&["--bogus".to_string()]).is_err());
        assert!(AgentArgs::parse(&[]).is_err());
    }

    #[test]
    fn answers_parse() {
        let line = answer("a1", "[::ffff:10.244.1.100]:4000".parse().expect("literal"), 80);
        assert_eq!(line, "a1 10.244.1.100:4000 80\n");
        assert_eq!(
            parse_answer(&line),
            Outcome::Reply { host: "a1".into(), peer: "10.244.1.100:4000".parse().expect("literal") }
        );
        assert!(matches!(parse_answer("garbage"), Outcome::Error { .. }));
    }

    #[test]
    fn requests_serialize_as_tagged_json() {
        let req = AgentRequest::CloseAll;
        let text = serde_json::to_string(&req).unwrap_or_default();
        assert_eq!(text, r#"{"op":"close_all"}"#);
        let resp: AgentResponse =
            serde_json::from_str(r#"{"status":"attempts","attempts":[{"outcome":"refused","elapsed_us":3}]}"#)
                .unwrap_or(AgentResponse::Ok);
        assert_eq!(
            resp,
            AgentResponse::Attempts { attempts: vec![Attempt { outcome: Outcome::Refused, elapsed_us: 3 }] }
        );
    }
}
