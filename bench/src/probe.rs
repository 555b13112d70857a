//! Client-side measurements; each runs on a thread inside a lab namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes with a RST (SO_LINGER 0): no TIME_WAIT, no FIN exchange.
fn abort(s: TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// New-connection latency: the time `connect()` takes (SYN out, SYN-ACK
/// in), `count` times after `warmup`, in µs.
pub fn connect_latency(to: SocketAddr, warmup: usize, count: usize) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let t = Instant::now();
        let s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).map_err(|e| format!("connect {to}: {e}"))?;
        let d = t.elapsed();
        abort(s);
        if i >= warmup {
            out.push(d.as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

/// One request: connect, send `E`, read the answering endpoint's address, close.
pub fn request(to: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    s.write_all(b"E")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer.trim().to_string())
}

/// Connection rate: sequential connect, request, response, close; conn/s.
pub fn rate(to: SocketAddr, warmup: usize, count: usize) -> Result<f64, String> {
    for _ in 0..warmup {
        request(to).map_err(|e| format!("request {to}: {e}"))?;
    }
    let t = Instant::now();
    for _ in 0..count {
        request(to).map_err(|e| format!("request {to}: {e}"))?;
    }
    Ok(count as f64 / t.elapsed().as_secs_f64())
}

/// Requests until one is answered by `expect` (any endpoint when `None`);
/// returns the wall-clock time its connection was established. Each
/// attempt gives its SYN 20 ms (a dropped SYN is abandoned rather than
/// retransmitted a second later, which would date the answer too early);
/// failed attempts are retried after 1 ms, answers from other endpoints at once.
pub fn wait_for(to: SocketAddr, expect: Option<IpAddr>, deadline: Instant) -> Option<SystemTime> {
    while Instant::now() < deadline {
        let attempt = || -> std::io::Result<(SystemTime, String)> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(20))?;
            let connected = SystemTime::now();
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
            s.write_all(b"E")?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok((connected, answer.trim().to_string()))
        };
        match attempt() {
            Ok((connected, who)) if expect.is_none_or(|e| who == e.to_string()) => return Some(connected),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    None
}

/// One long flow: send for `secs`, then wait for the server to see EOF; Gbit/s.
pub fn throughput(to: SocketAddr, secs: f64) -> Result<f64, String> {
    let mut s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).map_err(|e| format!("connect {to}: {e}"))?;
    s.write_all(b"S").map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; 128 * 1024];
    let t = Instant::now();
    let mut sent: u64 = 0;
    while t.elapsed().as_secs_f64() < secs {
        s.write_all(&buf).map_err(|e| format!("sending: {e}"))?;
        sent += buf.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(sent as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e9)
}

/// The named `TcpExt:` counters of the calling thread's network namespace
/// (`/proc/thread-self/net/netstat`: `/proc/net` would show the process's
/// main thread's namespace, not this one's).
pub fn tcp_ext_counters(names: &[&str]) -> Result<Vec<u64>, String> {
    let path = "/proc/thread-self/net/netstat";
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    parse_tcp_ext(&text, names).ok_or_else(|| format!("{path}: no TcpExt counters {names:?}"))
}

/// The values of `names` from netstat's pair of `TcpExt:` lines (a header
/// line of names, then a line of values).
fn parse_tcp_ext(text: &str, names: &[&str]) -> Option<Vec<u64>> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    names.iter().map(|n| header.iter().position(|h| h == n).and_then(|i| values.get(i)?.parse().ok())).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tcp_ext_values_are_read_by_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPSynRetrans\n\
                    TcpExt: 0 7 9 3\n\
                    IpExt: InNoRoutes\nIpExt: 1\n";
        assert_eq!(super::parse_tcp_ext(text, &["TCPSynRetrans", "ListenDrops"]), Some(vec![3, 9]));
        assert_eq!(super::parse_tcp_ext(text, &["NoSuchCounter"]), None);
    }
}
