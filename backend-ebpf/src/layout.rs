//! The Rust mirror of `bpf/switchyard.h`: map keys and values exactly as the
//! programs see them. Every struct is `repr(C)` with explicit padding (hash
//! map keys are compared byte by byte, so no byte may be left undefined);
//! the tests below compare sizes and offsets with what the C compiler
//! produced from the header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const CLASS_EXTERNAL: usize = 0;
pub const CLASS_POD: usize = 1;
pub const CLASS_NODE: usize = 2;
pub const CLASSES: usize = 3;

pub const SCOPE_ADDR: u8 = 0;
pub const SCOPE_NODEPORT: u8 = 1;

pub const KIND_CLUSTER_IP: u8 = 0;
pub const KIND_EXTERNAL_IP: u8 = 1;
pub const KIND_LOAD_BALANCER: u8 = 2;
pub const KIND_NODE_PORT: u8 = 3;

/// `Backend::flags`: in the port's hairpin set.
pub const BACKEND_HAIRPIN: u16 = 1;

pub const FORWARD: u8 = 0;
pub const REJECT: u8 = 1;
pub const DROP: u8 = 2;

pub const ROUTE_MAGLEV: u8 = 1;
pub const MAGLEV_M: usize = 1021;

pub const NODE_ADDR: u32 = 1;
pub const NODE_NODEPORT: u32 = 2;

pub const CT_FORWARD: u8 = 0;
pub const CT_REVERSE: u8 = 1;
pub const CT_SNAT: u8 = 1;
pub const CT_CLOSING: u8 = 2;
pub const CT_EGRESS: u8 = 4;

pub const SOCK_FORWARD: u8 = 0;
pub const SOCK_REVERSE: u8 = 1;
pub const SOCK_MASQ: u8 = 1;

pub const STATS: u32 = 16;
/// Names of the per-CPU counters in `swy_stats`, by index.
pub const STAT_NAMES: [&str; 12] = [
    "dnat",
    "reverse_nat",
    "reject",
    "drop",
    "socket_lb",
    "snat_ports_exhausted",
    "conntrack_insert_failed",
    "no_backend",
    "source_range_drop",
    "port_remap",
    "conntrack_takeover",
    "egress_snat",
];

/// An address: IPv4 as v4-mapped IPv6, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub w: [u32; 4],
}

impl Addr {
    pub fn octets(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, w) in self.w.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        out
    }

    pub fn from_octets(o: [u8; 16]) -> Addr {
        let mut w = [0u32; 4];
        for (i, word) in w.iter_mut().enumerate() {
            *word = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
        }
        Addr { w }
    }

    pub fn is_zero(&self) -> bool {
        self.w == [0; 4]
    }

    pub fn to_ip(self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.octets());
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(v4) => Addr::from_octets(v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => Addr::from_octets(v6.octets()),
        }
    }
}

impl From<Ipv4Addr> for Addr {
    fn from(ip: Ipv4Addr) -> Addr {
        Addr::from(IpAddr::V4(ip))
    }
}

/// `swy_svc` key: one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SvcVal {
    pub route: [u64; CLASSES],
    pub id: u64,
    pub affinity_timeout: u32,
    pub kind: u8,
    pub masq: u8,
    pub flags: u8,
    /// Bit per source class: loadBalancerSourceRanges apply.
    pub ranges: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteVal {
    pub generation: u32,
    pub count: u32,
    pub verdict: u8,
    pub flags: u8,
    pub pad: u16,
    pub pad2: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub route: u64,
    pub generation: u32,
    pub slot: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    /// `BACKEND_*`.
    pub flags: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    pub route: u64,
    pub generation: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevVal {
    pub slot: [u32; MAGLEV_M],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtVal {
    pub nat: Addr,
    pub nat2: Addr,
    pub nat_port: u16,
    pub nat2_port: u16,
    pub dir: u8,
    pub flags: u8,
    pub pad: u16,
    pub last_ns: u64,
    pub route: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffKey {
    pub route: u64,
    pub client: Addr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffVal {
    pub backend: Backend,
    pub slot: u32,
    pub last_ns: u64,
}

/// `swy_lpm_key` without its prefix length (aya's `lpm_trie::Key` adds it).
pub type LpmData = Addr;

/// A 64-bit id as the two `__u32` of `swy_srcrange_key.id`: the C side
/// copies the u64's memory, so the words are in native order.
pub fn id_words(id: u64) -> [u32; 2] {
    let b = id.to_ne_bytes();
    [u32::from_ne_bytes([b[0], b[1], b[2], b[3]]), u32::from_ne_bytes([b[4], b[5], b[6], b[7]])]
}

/// `swy_srcrange_key` without its prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrcRangeData {
    pub id: [u32; 2],
    pub addr: Addr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub cookie: u64,
    pub addr: Addr,
    pub port: u16,
    pub dir: u8,
    pub pad: [u8; 5],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockVal {
    pub addr: Addr,
    pub port: u16,
    pub flags: u8,
    /// Bit per source class: loadBalancerSourceRanges apply.
    pub ranges: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    pub snat4: Addr,
    pub snat6: Addr,
    pub netns_cookie: u64,
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub udp_timeout_s: u32,
}

// SAFETY: every type is repr(C), made only of integers with explicit padding
// fields, so any bit pattern is valid and no byte is uninitialised.
unsafe impl aya::Pod for Addr {}
unsafe impl aya::Pod for SvcKey {}
unsafe impl aya::Pod for SvcVal {}
unsafe impl aya::Pod for RouteVal {}
unsafe impl aya::Pod for BackendKey {}
unsafe impl aya::Pod for Backend {}
unsafe impl aya::Pod for MaglevKey {}
unsafe impl aya::Pod for MaglevVal {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtVal {}
unsafe impl aya::Pod for AffKey {}
unsafe impl aya::Pod for AffVal {}
unsafe impl aya::Pod for SrcRangeData {}
unsafe impl aya::Pod for SockKey {}
unsafe impl aya::Pod for SockVal {}
unsafe impl aya::Pod for Config {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    include!(concat!(env!("OUT_DIR"), "/layout_c.rs"));

    fn rust_layout() -> Vec<(&'static str, &'static str, usize)> {
        macro_rules! size {
            ($c:literal, $t:ty) => {
                ($c, "<size>", size_of::<$t>())
            };
        }
        macro_rules! off {
            ($c:literal, $t:ty, $f:ident) => {
                ($c, stringify!($f), offset_of!($t, $f))
            };
        }
        vec![
            size!("swy_addr", Addr),
            size!("swy_svc_key", SvcKey),
            off!("swy_svc_key", SvcKey, addr),
            off!("swy_svc_key", SvcKey, port),
            off!("swy_svc_key", SvcKey, proto),
            off!("swy_svc_key", SvcKey, scope),
            size!("swy_svc_val", SvcVal),
            off!("swy_svc_val", SvcVal, route),
            off!("swy_svc_val", SvcVal, id),
            off!("swy_svc_val", SvcVal, affinity_timeout),
            off!("swy_svc_val", SvcVal, kind),
            off!("swy_svc_val", SvcVal, masq),
            off!("swy_svc_val", SvcVal, flags),
            off!("swy_svc_val", SvcVal, ranges),
            size!("swy_route_val", RouteVal),
            off!("swy_route_val", RouteVal, generation),
            off!("swy_route_val", RouteVal, count),
            off!("swy_route_val", RouteVal, verdict),
            off!("swy_route_val", RouteVal, flags),
            size!("swy_backend_key", BackendKey),
            off!("swy_backend_key", BackendKey, route),
            off!("swy_backend_key", BackendKey, generation),
            off!("swy_backend_key", BackendKey, slot),
            size!("swy_backend", Backend),
            off!("swy_backend", Backend, addr),
            off!("swy_backend", Backend, port),
            off!("swy_backend", Backend, flags),
            size!("swy_maglev_key", MaglevKey),
            off!("swy_maglev_key", MaglevKey, route),
            off!("swy_maglev_key", MaglevKey, generation),
            size!("swy_maglev_val", MaglevVal),
            size!("swy_ct_key", CtKey),
            off!("swy_ct_key", CtKey, src),
            off!("swy_ct_key", CtKey, dst),
            off!("swy_ct_key", CtKey, sport),
            off!("swy_ct_key", CtKey, dport),
            off!("swy_ct_key", CtKey, proto),
            size!("swy_ct_val", CtVal),
            off!("swy_ct_val", CtVal, nat),
            off!("swy_ct_val", CtVal, nat2),
            off!("swy_ct_val", CtVal, nat_port),
            off!("swy_ct_val", CtVal, nat2_port),
            off!("swy_ct_val", CtVal, dir),
            off!("swy_ct_val", CtVal, flags),
            off!("swy_ct_val", CtVal, last_ns),
            off!("swy_ct_val", CtVal, route),
            size!("swy_aff_key", AffKey),
            off!("swy_aff_key", AffKey, route),
            off!("swy_aff_key", AffKey, client),
            size!("swy_aff_val", AffVal),
            off!("swy_aff_val", AffVal, backend),
            off!("swy_aff_val", AffVal, slot),
            off!("swy_aff_val", AffVal, last_ns),
            ("swy_lpm_key", "<size>", 4 + size_of::<LpmData>()),
            ("swy_lpm_key", "prefixlen", 0),
            ("swy_lpm_key", "addr", 4),
            ("swy_srcrange_key", "<size>", 4 + size_of::<SrcRangeData>()),
            ("swy_srcrange_key", "prefixlen", 0),
            ("swy_srcrange_key", "id", 4 + offset_of!(SrcRangeData, id)),
            ("swy_srcrange_key", "addr", 4 + offset_of!(SrcRangeData, addr)),
            size!("swy_sock_key", SockKey),
            off!("swy_sock_key", SockKey, cookie),
            off!("swy_sock_key", SockKey, addr),
            off!("swy_sock_key", SockKey, port),
            off!("swy_sock_key", SockKey, dir),
            size!("swy_sock_val", SockVal),
            off!("swy_sock_val", SockVal, addr),
            off!("swy_sock_val", SockVal, port),
            off!("swy_sock_val", SockVal, flags),
            size!("swy_config", Config),
            off!("swy_config", Config, snat4),
            off!("swy_config", Config, snat6),
            off!("swy_config", Config, netns_cookie),
            off!("swy_config", Config, snat_port_min),
            off!("swy_config", Config, snat_port_max),
            off!("swy_config", Config, udp_timeout_s),
        ]
    }

    #[test]
    fn rust_and_c_layouts_agree() {
        let rust = rust_layout();
        assert_eq!(rust.len(), C_LAYOUT.len(), "every C field has a Rust counterpart in this test");
        for (r, c) in rust.iter().zip(C_LAYOUT) {
            assert_eq!(r, c, "layout of {}.{} differs (Rust, C)", c.0, c.1);
        }
    }

    #[test]
    fn rust_and_c_constants_agree() {
        let rust: &[(&str, u64)] = &[
            ("SWY_CLASS_EXTERNAL", CLASS_EXTERNAL as u64),
            ("SWY_CLASS_POD", CLASS_POD as u64),
            ("SWY_CLASS_NODE", CLASS_NODE as u64),
            ("SWY_SCOPE_ADDR", SCOPE_ADDR.into()),
            ("SWY_SCOPE_NODEPORT", SCOPE_NODEPORT.into()),
            ("SWY_KIND_CLUSTER_IP", KIND_CLUSTER_IP.into()),
            ("SWY_KIND_EXTERNAL_IP", KIND_EXTERNAL_IP.into()),
            ("SWY_KIND_LOAD_BALANCER", KIND_LOAD_BALANCER.into()),
            ("SWY_KIND_NODE_PORT", KIND_NODE_PORT.into()),
            ("SWY_BACKEND_HAIRPIN", BACKEND_HAIRPIN.into()),
            ("SWY_FORWARD", FORWARD.into()),
            ("SWY_REJECT", REJECT.into()),
            ("SWY_DROP", DROP.into()),
            ("SWY_ROUTE_MAGLEV", ROUTE_MAGLEV.into()),
            ("SWY_MAGLEV_M", MAGLEV_M as u64),
            ("SWY_NODE_ADDR", NODE_ADDR.into()),
            ("SWY_NODE_NODEPORT", NODE_NODEPORT.into()),
            ("SWY_STATS", STATS.into()),
            ("SWY_CT_CLOSING", CT_CLOSING.into()),
            ("SWY_CT_SNAT", CT_SNAT.into()),
            ("SWY_CT_EGRESS", CT_EGRESS.into()),
            ("SWY_CT_FORWARD", CT_FORWARD.into()),
            ("SWY_CT_REVERSE", CT_REVERSE.into()),
            ("SWY_SOCK_FORWARD", SOCK_FORWARD.into()),
            ("SWY_SOCK_REVERSE", SOCK_REVERSE.into()),
            ("SWY_SOCK_MASQ", SOCK_MASQ.into()),
        ];
        assert_eq!(rust, C_CONSTANTS);
    }

    #[test]
    fn addresses_are_v4_mapped() {
        let a = Addr::from(Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(a.octets()[10..], [0xff, 0xff, 10, 96, 0, 1]);
        assert_eq!(a.to_ip(), IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)));
        let v6: IpAddr = "fd00::1".parse().expect("valid");
        assert_eq!(Addr::from(v6).to_ip(), v6);
    }
}
