//! Reaching across the lab's namespace boundary from the runner's process.
//!
//! The control plane listens on the root namespace's loopback, where the
//! runner reaches it; a proxy under test runs inside node1, which routes only
//! lab addresses. [`Relay`] is a TCP listener *created inside* node1 (on its
//! loopback) whose connections the runner forwards to the API server: a socket
//! stays in the namespace it was made in, so one process serves both sides.
//! The API server's serving certificate already names 127.0.0.1, so TLS
//! checks hold through the relay unchanged. [`http_get_in`] is the reverse
//! direction: a plain HTTP GET made from inside a namespace (kube-proxy's
//! `/healthz` and `/metrics` listen on node1's addresses).
//!
//! A relay and not a route: routing the lab to the root namespace would need
//! a veth into the root namespace and addresses and routes there, which the
//! lab never touches.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use proxy_core::NetNamespace;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use crate::error::{ConformanceError, Result};

/// Forwards TCP connections made to a port on a namespace's loopback to an
/// address the runner reaches; stops (with every connection) when dropped.
#[derive(Debug)]
pub struct Relay {
    listen: SocketAddr,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on `127.0.0.1:<free port>` inside `ns` and forwards every
    /// connection to `target`.
    pub async fn start(ns: &NetNamespace, target: SocketAddr) -> Result<Relay> {
        let io = |operation: String| move |source| ConformanceError::Lab { operation, source };
        let label = ns.label();
        let listener = ns
            .run_async(|| {
                let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                l.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(l)
            })
            .await
            .and_then(|r| r)
            .map_err(io(format!("listening for the API relay in {label}")))?;
        let listen = listener.local_addr().map_err(io("reading the relay's address".into()))?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(io("registering the relay".into()))?;
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it drops the set, which aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((mut inbound, peer)) => {
                            connections.spawn(async move {
                                match tokio::net::TcpStream::connect(target).await {
                                    Ok(mut outbound) => {
                                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                    }
                                    Err(e) => debug!(%peer, %target, error = %e, "relay: target unreachable"),
                                }
                            });
                        }
                        Err(e) => {
                            debug!(error = %e, "relay: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        debug!(%listen, %target, namespace = %label, "relay ready");
        Ok(Relay { listen, task })
    }

    /// Where clients inside the namespace connect (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain HTTP/1.1 GET to `addr` made from inside `ns`: the status code and body.
pub async fn http_get_in(ns: &NetNamespace, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let timeout = Duration::from_secs(5);
    let stream = ns.run_async(move || std::net::TcpStream::connect_timeout(&addr, timeout)).await??;
    stream.set_nonblocking(true)?;
    let mut stream = tokio::net::TcpStream::from_std(stream)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
    Ok(parse_response(&raw))
}

/// Status code and body of an HTTP/1.1 response (chunked bodies joined).
pub(crate) fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return (code, body.to_string());
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    (code, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_plain_and_chunked() {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), (200, "ok".into()));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), (503, "abcde".into()));
        assert_eq!(parse_response(b"garbage").0, 0);
    }

    #[tokio::test]
    async fn the_relay_forwards_both_ways() {
        let server = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let target = server.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = server.accept().await {
                let mut buf = [0u8; 5];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf.map(|b| b.to_ascii_uppercase())).await;
                }
            }
        });
        // The current namespace stands in for node1 (no root needed).
        let relay = Relay::start(&NetNamespace::current(), target).await.expect("relay");
        let mut c = tokio::net::TcpStream::connect(relay.addr()).await.expect("connect");
        c.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"HELLO");
        let addr = relay.addr();
        drop(relay);
        tokio::task::yield_now().await;
        // Dropped: no longer accepting (the listener closes with its task).
        let refused = crate::patience::poll(Duration::from_secs(5), || async {
            match tokio::net::TcpStream::connect(addr).await {
                Err(_) => Ok(()),
                Ok(_) => Err(()),
            }
        })
        .await;
        assert!(refused.result.is_ok(), "the relay still accepts after drop");
    }
}
