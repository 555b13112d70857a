//! The Rust side of `bpf/switchyard.h`: map keys and values exactly as the
//! programs see them. The types are generated from the header by bindgen
//! (build.rs), so there is one definition; this module names them, adds the
//! address conversions, and types the header's constants for their Rust uses.
//! Every struct in the header spells out its padding (hash map keys are
//! compared byte by byte, so no byte may be left undefined); the tests below
//! also compare sizes and offsets with what the C compiler produced.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// bindgen's output for `bpf/switchyard.h` (the `swy_*` types, `SWY_*` constants).
#[allow(non_camel_case_types, non_upper_case_globals, dead_code, missing_debug_implementations, clippy::all)]
pub mod sys {
    include!(concat!(env!("OUT_DIR"), "/switchyard_h.rs"));
}

// The header's constants, typed as the fields they go into (bindgen gives
// every `#define` as u32). `fits_u8`/`fits_u16` make a value that outgrows its
// field a compile error instead of a silent truncation.
const fn fits_u8(v: u32) -> u8 {
    assert!(v <= u8::MAX as u32, "constant does not fit a __u8 field");
    v as u8
}
const fn fits_u16(v: u32) -> u16 {
    assert!(v <= u16::MAX as u32, "constant does not fit a __u16 field");
    v as u16
}

pub const CLASS_EXTERNAL: usize = sys::SWY_CLASS_EXTERNAL as usize;
pub const CLASS_POD: usize = sys::SWY_CLASS_POD as usize;
pub const CLASS_NODE: usize = sys::SWY_CLASS_NODE as usize;
pub const CLASSES: usize = sys::SWY_CLASSES as usize;

pub const SCOPE_ADDR: u8 = fits_u8(sys::SWY_SCOPE_ADDR);
pub const SCOPE_NODEPORT: u8 = fits_u8(sys::SWY_SCOPE_NODEPORT);

pub const KIND_CLUSTER_IP: u8 = fits_u8(sys::SWY_KIND_CLUSTER_IP);
pub const KIND_EXTERNAL_IP: u8 = fits_u8(sys::SWY_KIND_EXTERNAL_IP);
pub const KIND_LOAD_BALANCER: u8 = fits_u8(sys::SWY_KIND_LOAD_BALANCER);
pub const KIND_NODE_PORT: u8 = fits_u8(sys::SWY_KIND_NODE_PORT);

/// `Backend::flags`: in the port's hairpin set.
pub const BACKEND_HAIRPIN: u16 = fits_u16(sys::SWY_BACKEND_HAIRPIN);

pub const FORWARD: u8 = fits_u8(sys::SWY_FORWARD);
pub const REJECT: u8 = fits_u8(sys::SWY_REJECT);
pub const DROP: u8 = fits_u8(sys::SWY_DROP);

pub const ROUTE_MAGLEV: u8 = fits_u8(sys::SWY_ROUTE_MAGLEV);
pub const MAGLEV_M: usize = sys::SWY_MAGLEV_M as usize;

pub const NODE_ADDR: u32 = sys::SWY_NODE_ADDR;
pub const NODE_NODEPORT: u32 = sys::SWY_NODE_NODEPORT;

pub const CT_FORWARD: u8 = fits_u8(sys::SWY_CT_FORWARD);
pub const CT_REVERSE: u8 = fits_u8(sys::SWY_CT_REVERSE);
pub const CT_SNAT: u8 = fits_u8(sys::SWY_CT_SNAT);
pub const CT_CLOSING: u8 = fits_u8(sys::SWY_CT_CLOSING);
pub const CT_EGRESS: u8 = fits_u8(sys::SWY_CT_EGRESS);

pub const SOCK_FORWARD: u8 = fits_u8(sys::SWY_SOCK_FORWARD);
pub const SOCK_REVERSE: u8 = fits_u8(sys::SWY_SOCK_REVERSE);
pub const SOCK_MASQ: u8 = fits_u8(sys::SWY_SOCK_MASQ);

pub const STATS: u32 = sys::SWY_STATS;
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

/// An address (`swy_addr`): IPv4 as v4-mapped IPv6, network byte order.
pub type Addr = sys::swy_addr;
/// `swy_svc` key: one frontend (address, port in network byte order, protocol, scope).
pub type SvcKey = sys::swy_svc_key;
/// `swy_svc` value: route by source class, masquerade and source-range bits.
pub type SvcVal = sys::swy_svc_val;
pub type RouteVal = sys::swy_route_val;
pub type BackendKey = sys::swy_backend_key;
/// An endpoint: address, port (network byte order), `BACKEND_*` flags.
pub type Backend = sys::swy_backend;
pub type MaglevKey = sys::swy_maglev_key;
pub type MaglevVal = sys::swy_maglev_val;
pub type CtKey = sys::swy_ct_key;
pub type CtVal = sys::swy_ct_val;
pub type AffKey = sys::swy_aff_key;
pub type AffVal = sys::swy_aff_val;
pub type SockKey = sys::swy_sock_key;
pub type SockVal = sys::swy_sock_val;
pub type Config = sys::swy_config;

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

// SAFETY: every type is repr(C) (bindgen's, and SrcRangeData), made only of
// integers with explicit padding fields (the layout tests check there is no
// hole), so any bit pattern is valid and no byte is uninitialised.
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

    /// The types written here by hand (the header has them only inside a
    /// key with a prefix length in front); bindgen's types carry their own
    /// compile-time size and offset checks.
    fn rust_layout() -> Vec<(&'static str, &'static str, usize)> {
        vec![
            ("swy_lpm_key", "<size>", 4 + size_of::<LpmData>()),
            ("swy_lpm_key", "prefixlen", 0),
            ("swy_lpm_key", "addr", 4),
            ("swy_srcrange_key", "<size>", 4 + size_of::<SrcRangeData>()),
            ("swy_srcrange_key", "prefixlen", 0),
            ("swy_srcrange_key", "id", 4 + offset_of!(SrcRangeData, id)),
            ("swy_srcrange_key", "addr", 4 + offset_of!(SrcRangeData, addr)),
        ]
    }

    #[test]
    fn hand_written_layouts_agree_with_c() {
        let c: Vec<_> =
            C_LAYOUT.iter().filter(|(s, _, _)| ["swy_lpm_key", "swy_srcrange_key"].contains(s)).copied().collect();
        assert_eq!(rust_layout(), c);
    }

    #[test]
    fn a_generated_type_has_the_c_compilers_layout() {
        // One spot check that bindgen read the header the compiler did.
        let size = C_LAYOUT.iter().find(|(s, f, _)| *s == "swy_ct_val" && *f == "<size>").map(|e| e.2);
        assert_eq!(size, Some(size_of::<CtVal>()));
        assert_eq!(C_CONSTANTS.iter().find(|(n, _)| *n == "SWY_MAGLEV_M").map(|c| c.1), Some(MAGLEV_M as u64));
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
