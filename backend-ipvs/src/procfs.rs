//! Reading every real server at once from `/proc/thread-self/net/ip_vs`.
//!
//! A full sync must read every virtual server's real servers. Over generic
//! netlink that is one destination dump per virtual server (IPVS has no
//! "all destinations" dump): 10,000 round trips at 10k Services. The
//! kernel's `ip_vs` proc file (`ip_vs_info_seq_show`, 6.1) lists them all in
//! one read. It is per network namespace, resolved through the *reading
//! thread* (`thread-self`), so read it on a thread inside the node namespace.
//! Counters and weights are all we take from it; virtual servers themselves
//! still come from netlink (the file shows persistence timeouts in jiffies).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proxy_core::Protocol;

use crate::message::{RealServer, ServiceKey};

pub const PATH: &str = "/proc/thread-self/net/ip_vs";

/// `ADDR:PORT` as the file prints it: `0A60000A:0050` or `[fd00:0000:…:0061]:0050`.
fn endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.rsplit_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if let Some(v6) = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?)
    } else {
        IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?))
    };
    Some((ip, port))
}

fn forward(name: &str) -> Option<u32> {
    match name {
        "Masq" => Some(0),
        "Local" => Some(1),
        "Tunnel" => Some(2),
        "Route" => Some(3),
        _ => None,
    }
}

/// Parses the file: real servers by virtual server. Firewall-mark services
/// (which we never create) and unparsable lines are skipped with their real servers.
pub fn parse(text: &str) -> BTreeMap<ServiceKey, Vec<RealServer>> {
    let mut out: BTreeMap<ServiceKey, Vec<RealServer>> = BTreeMap::new();
    let mut current: Option<ServiceKey> = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("->") => {
                let (Some(key), Some(ep)) = (current, words.next()) else { continue };
                let Some((addr, port)) = endpoint(ep) else { continue };
                let fields: Vec<&str> = words.collect();
                let [fwd, weight, active, inactive] = fields[..] else { continue };
                let (Some(fwd_method), Ok(weight), Ok(active), Ok(inactive)) =
                    (forward(fwd), weight.parse::<i64>(), active.parse(), inactive.parse())
                else {
                    continue;
                };
                let mut rs = RealServer::nat(addr, port, u32::try_from(weight.max(0)).unwrap_or(0));
                rs.fwd_method = fwd_method;
                rs.active_conns = active;
                rs.inactive_conns = inactive;
                out.entry(key).or_default().push(rs);
            }
            Some(proto @ ("TCP" | "UDP" | "SCTP")) => {
                let protocol = match proto {
                    "TCP" => Protocol::Tcp,
                    "UDP" => Protocol::Udp,
                    _ => Protocol::Sctp,
                };
                current = words.next().and_then(endpoint).map(|(addr, port)| ServiceKey { protocol, addr, port });
                if let Some(k) = current {
                    out.entry(k).or_default();
                }
            }
            // "FWM", the header lines.
            _ => current = None,
        }
    }
    out
}

/// Reads and parses the file of the calling thread's namespace; `None` when
/// it cannot be read (no IPVS, no procfs): the caller falls back to netlink.
pub fn read() -> Option<BTreeMap<ServiceKey, Vec<RealServer>>> {
    std::fs::read_to_string(PATH).ok().map(|t| parse(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_6_1_prints() {
        // Captured from Debian's 6.1 in the VM (`cat /proc/net/ip_vs`), plus an IPv6 and a firewall-mark service.
        let text = "IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A60000A:0050 rr  persistent 15000 FFFFFFFF
  -> 0AF40106:1F90      Masq    1      0          0         
  -> 0AF40105:1F90      Masq    0      2          3         
SCTP  C0A8010A:7580 rr  
UDP  [fd00:0010:0096:0000:0000:0000:0000:0061]:0035 rr  
  -> [fd00:0010:0244:0001:0000:0000:0000:0011]:14E9      Masq    1      0          4         
FWM  00000001 rr  
  -> 0AF40107:1F90      Masq    1      0          0         
";
        let got = parse(text);
        let tcp = ServiceKey { protocol: Protocol::Tcp, addr: "10.96.0.10".parse().unwrap(), port: 80 };
        let sctp = ServiceKey { protocol: Protocol::Sctp, addr: "192.168.1.10".parse().unwrap(), port: 30080 };
        let udp6 = ServiceKey { protocol: Protocol::Udp, addr: "fd00:10:96::61".parse().unwrap(), port: 53 };
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), {
            let mut v = vec![tcp, sctp, udp6];
            v.sort();
            v
        });
        let mut draining = RealServer::nat("10.244.1.5".parse().unwrap(), 8080, 0);
        draining.active_conns = 2;
        draining.inactive_conns = 3;
        assert_eq!(got[&tcp], vec![RealServer::nat("10.244.1.6".parse().unwrap(), 8080, 1), draining]);
        assert!(got[&sctp].is_empty());
        assert_eq!(got[&udp6][0].socket_addr(), "[fd00:10:244:1::11]:5353".parse().unwrap());
        assert_eq!(got[&udp6][0].inactive_conns, 4);
    }
}
