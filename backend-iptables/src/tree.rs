//! Dispatch trees: how a packet finds its Service without walking one rule
//! per Service.
//!
//! kube-proxy's KUBE-SERVICES chain has one rule per frontend; at 30,000
//! Services every new connection walks up to 30,000 rules (400–600 µs on
//! these machines). Here the frontends hang off a path-compressed trie keyed
//! on the destination address (or, for node ports, on protocol and port):
//! each inner chain tests the next [`TreeSpec::stride`] bits of the key with
//! one rule per non-empty child (`-d 10.96.64.0/18 -j SWITCHYARD-DST-…`),
//! and a leaf holds at most [`TreeSpec::leaf_max`] rules (one Service's
//! frontend may exceed it on its own). A packet walks about
//! `2^stride × depth + leaf_max` rules whatever the number of Services.
//!
//! Chain names are a hash of the node's prefix, so a node keeps its name
//! when the set around it changes: a new Service rewrites the leaf it lands
//! in (and its parent only when that leaf splits or merges).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::names;
use proxy_core::{IpFamily, Protocol};

/// What a tree is keyed on and how a prefix becomes a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// Destination address (`-d PREFIX`).
    Destination(IpFamily),
    /// Source address (`-s PREFIX`).
    Source(IpFamily),
    /// (protocol, port) as `proto << 16 | port`, 18 bits (`-p P -m P --dport LO:HI`).
    ProtoPort,
}

impl KeyKind {
    pub fn width(self) -> u8 {
        match self {
            KeyKind::Destination(IpFamily::V4) | KeyKind::Source(IpFamily::V4) => 32,
            KeyKind::Destination(IpFamily::V6) | KeyKind::Source(IpFamily::V6) => 128,
            KeyKind::ProtoPort => 18,
        }
    }

    /// The match selecting keys with this prefix (`key` right-aligned, low bits zero).
    pub fn prefix_match(self, key: u128, len: u8) -> String {
        if len == 0 {
            return String::new();
        }
        match self {
            KeyKind::Destination(f) => format!("-d {}", prefix_net(f, key, len)),
            KeyKind::Source(f) => format!("-s {}", prefix_net(f, key, len)),
            KeyKind::ProtoPort => {
                let proto = proto_of_code((key >> 16) as u8).as_lower_str();
                if len <= 2 {
                    return format!("-p {proto}");
                }
                let lo = (key & 0xffff) as u16;
                let hi = lo | (((1u32 << (18 - len)) - 1) as u16);
                if lo == hi {
                    format!("-p {proto} -m {proto} --dport {lo}")
                } else {
                    format!("-p {proto} -m {proto} --dport {lo}:{hi}")
                }
            }
        }
    }
}

fn prefix_net(family: IpFamily, key: u128, len: u8) -> IpNet {
    let ip = match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(key as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(key)),
    };
    // The prefix length is at most the width, so this cannot fail.
    IpNet::new(ip, len).unwrap_or_else(|_| IpNet::from(ip))
}

/// The key of an address.
pub fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Protocol codes in a (protocol, port) key.
pub fn proto_code(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    }
}

fn proto_of_code(c: u8) -> Protocol {
    match c {
        0 => Protocol::Tcp,
        1 => Protocol::Udp,
        _ => Protocol::Sctp,
    }
}

/// The key of a (protocol, port).
pub fn port_key(p: Protocol, port: u16) -> u128 {
    (u128::from(proto_code(p)) << 16) | u128::from(port)
}

/// How one tree is shaped and named.
#[derive(Clone, Debug)]
pub struct TreeSpec {
    pub key: KeyKind,
    /// Bits tested per inner chain (2 → at most 4 rules per inner chain).
    pub stride: u8,
    /// A node whose entries hold at most this many rules is a leaf.
    pub leaf_max: usize,
    /// Name of the root chain (fixed; the hooks jump to it).
    pub root: &'static str,
    /// The kind in inner chains' names (`SWITCHYARD-<kind>-<hash>`).
    pub kind: &'static str,
    /// Mixed into inner chains' hashes (the family), so trees never share names.
    pub tag: &'static str,
}

/// Something to place in a tree: its key, how many rules it adds to its
/// leaf and a hash of those rules. The tree is built from these alone (its
/// shape depends on keys and weights, a leaf's hash on its entries' hashes),
/// so it can be kept between syncs while the rules live in the render cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    pub key: u128,
    /// Number of rules.
    pub weight: usize,
    /// A hash of the rules, computed once by whoever made them.
    pub hash: u64,
}

/// One chain of a built tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeChain {
    pub name: String,
    /// A hash of the chain's content: equal hashes, equal rules.
    pub hash: u64,
    pub body: Body,
}

/// What a tree chain holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// The rules of the entries at these positions of the input, in key
    /// order, `rules` of them in all.
    Leaf { entries: std::ops::Range<usize>, rules: usize },
    /// One rule per child.
    Dispatch(Vec<String>),
}

impl TreeChain {
    pub fn rule_count(&self) -> usize {
        match &self.body {
            Body::Leaf { rules, .. } => *rules,
            Body::Dispatch(rules) => rules.len(),
        }
    }
}

/// A leaf's hash: its entries' hashes in order.
pub fn leaf_hash(entries: &[TreeEntry]) -> u64 {
    let mut h = DefaultHasher::new();
    for e in entries {
        e.hash.hash(&mut h);
    }
    h.finish()
}

fn common_prefix_len(a: u128, b: u128, width: u8) -> u8 {
    let diff = a ^ b;
    if diff == 0 {
        return width;
    }
    let used = 128 - diff.leading_zeros() as u8;
    width - used
}

/// The name of the chain for a prefix: readable for IPv4 and ports
/// (`SWITCHYARD-DST-0A600000-12` is 10.96.0.0/12), hashed for IPv6 where
/// the prefix does not fit in 28 characters.
pub fn chain_name(spec: &TreeSpec, prefix: u128, len: u8) -> String {
    match spec.key {
        KeyKind::Destination(IpFamily::V4) | KeyKind::Source(IpFamily::V4) => {
            format!("{}{}-{:08X}-{len}", names::PREFIX, spec.kind, prefix as u32)
        }
        KeyKind::ProtoPort => format!("{}{}-{:05X}-{len}", names::PREFIX, spec.kind, prefix as u32),
        KeyKind::Destination(IpFamily::V6) | KeyKind::Source(IpFamily::V6) => {
            names::hashed(spec.kind, &[spec.tag, &format!("{prefix:x}/{len}")])
        }
    }
}

/// Builds a tree over entries, which must be sorted by key (entries with
/// equal keys keep their order). The root comes first in the result.
pub fn build(spec: &TreeSpec, entries: &[TreeEntry]) -> Vec<TreeChain> {
    debug_assert!(entries.windows(2).all(|w| w[0].key <= w[1].key), "tree entries must be sorted");
    let mut out = Vec::new();
    node(spec, entries, 0, 0, spec.root.to_string(), &mut out);
    out
}

fn weight(entries: &[TreeEntry]) -> usize {
    entries.iter().map(|e| e.weight).sum()
}

/// A leaf over `entries`, which start at position `base` of the input.
fn leaf(name: String, base: usize, entries: &[TreeEntry]) -> TreeChain {
    TreeChain {
        name,
        hash: leaf_hash(entries),
        body: Body::Leaf { entries: base..base + entries.len(), rules: weight(entries) },
    }
}

/// One child of an inner node: its compressed prefix and where its entries are.
struct Child<'e> {
    prefix: u128,
    len: u8,
    start: usize,
    entries: &'e [TreeEntry],
}

/// A node over `entries`, which start at position `base` of the input.
fn node(spec: &TreeSpec, entries: &[TreeEntry], base: usize, len: u8, name: String, out: &mut Vec<TreeChain>) {
    let width = spec.key.width();
    if weight(entries) <= spec.leaf_max || len >= width || entries.len() <= 1 {
        out.push(leaf(name, base, entries));
        return;
    }
    let slot = out.len();
    out.push(TreeChain { name: String::new(), hash: 0, body: Body::Dispatch(Vec::new()) });
    let next = (len + spec.stride).min(width);
    let shift = width - next;
    let mut children = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        let group_key = entries[start].key >> shift;
        let mut end = start + 1;
        while end < entries.len() && entries[end].key >> shift == group_key {
            end += 1;
        }
        let group = &entries[start..end];
        // Path compression: skip levels where the group has a single child.
        let common = common_prefix_len(group[0].key, group[group.len() - 1].key, width);
        let aligned = (common / spec.stride) * spec.stride;
        let depth = aligned.max(next).min(width);
        let prefix = if depth == 0 { 0 } else { (group[0].key >> (width - depth)) << (width - depth) };
        children.push(Child { prefix, len: depth, start, entries: group });
        start = end;
    }
    // Children too big for a leaf become inner nodes; consecutive small ones
    // share leaf chains (named after the first), so leaves stay well filled
    // and the chain count low (iptables-nft's cost grows with the number of chains).
    let mut rules = Vec::with_capacity(children.len());
    let mut i = 0;
    while i < children.len() {
        let c = &children[i];
        let w = weight(c.entries);
        if w > spec.leaf_max && c.len < width && c.entries.len() > 1 {
            let child = chain_name(spec, c.prefix, c.len);
            rules.push(dispatch_rule(spec, c, &child));
            node(spec, c.entries, base + c.start, c.len, child, out);
            i += 1;
            continue;
        }
        let bin = chain_name(spec, c.prefix, c.len);
        let first = i;
        let mut total = w;
        i += 1;
        while i < children.len() {
            let w = weight(children[i].entries);
            let big = w > spec.leaf_max && children[i].len < width && children[i].entries.len() > 1;
            if big || total + w > spec.leaf_max {
                break;
            }
            total += w;
            i += 1;
        }
        let packed = &children[first..i];
        for c in packed {
            rules.push(dispatch_rule(spec, c, &bin));
        }
        // The packed children are consecutive in `entries`.
        let from = packed[0].start;
        let count: usize = packed.iter().map(|c| c.entries.len()).sum();
        out.push(leaf(bin, base + from, &entries[from..from + count]));
    }
    let mut h = DefaultHasher::new();
    rules.hash(&mut h);
    out[slot] = TreeChain { name, hash: h.finish(), body: Body::Dispatch(rules) };
}

fn dispatch_rule(spec: &TreeSpec, c: &Child<'_>, target: &str) -> String {
    let m = spec.key.prefix_match(c.prefix, c.len);
    if m.is_empty() { format!("-j {target}") } else { format!("{m} -j {target}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(leaf_max: usize) -> TreeSpec {
        TreeSpec {
            key: KeyKind::Destination(IpFamily::V4),
            stride: 2,
            leaf_max,
            root: "SWITCHYARD-ROOT",
            kind: "DST",
            tag: "IPv4",
        }
    }

    fn entries(ips: &[&str], rules: &[String]) -> Vec<TreeEntry> {
        let mut v: Vec<_> =
            ips.iter().map(|ip| TreeEntry { key: ip_key(ip.parse().unwrap()), weight: rules.len(), hash: 1 }).collect();
        v.sort_by_key(|e| e.key);
        v
    }

    #[test]
    fn small_sets_are_one_leaf() {
        let r = vec!["-j RETURN".to_string()];
        let t = build(&spec(8), &entries(&["10.96.0.1", "10.96.0.2"], &r));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "SWITCHYARD-ROOT");
        assert_eq!(t[0].rule_count(), 2);
    }

    #[test]
    fn splits_and_compresses() {
        let r = vec!["-j RETURN".to_string()];
        let ips: Vec<String> = (0..64).map(|i| format!("10.96.{}.{}", i / 8, i % 8 + 1)).collect();
        let mut ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        ips.push("192.168.1.1");
        let t = build(&spec(8), &entries(&ips, &r));
        // The root splits on the first two bits: 10.x (00) and 192.x (11).
        let Body::Dispatch(root) = &t[0].body else { panic!("root is a leaf") };
        assert_eq!(root.len(), 2);
        // 10.96.0.0/20 is the compressed prefix of the 10.x group; 192.168.1.1 is a /32 leaf.
        assert_eq!(root[0], "-d 10.96.0.0/20 -j SWITCHYARD-DST-0A600000-20", "{root:?}");
        assert_eq!(root[1], "-d 192.168.1.1/32 -j SWITCHYARD-DST-C0A80101-32", "{root:?}");
        for c in &t {
            assert!(c.rule_count() <= 8, "{} has {}", c.name, c.rule_count());
            assert!(c.name.len() <= 28);
        }
        let leaves: usize = t.iter().filter(|c| matches!(c.body, Body::Leaf { .. })).map(|c| c.rule_count()).sum();
        assert_eq!(leaves, 65);
        // Names are a function of the prefix only: rebuilding after adding
        // one address changes only the chains on its path.
        let mut more = ips.clone();
        more.push("10.96.3.7");
        let t2 = build(&spec(8), &entries(&more, &r));
        let changed: Vec<_> = t2.iter().filter(|c| !t.iter().any(|o| o.name == c.name && o.hash == c.hash)).collect();
        // Here a leaf overflows and splits: it, its parent and the new children.
        assert!(changed.len() <= 2 + (1 << 2), "{changed:?}");
    }

    #[test]
    fn port_prefixes() {
        assert_eq!(KeyKind::ProtoPort.prefix_match(port_key(Protocol::Udp, 0), 2), "-p udp");
        assert_eq!(
            KeyKind::ProtoPort.prefix_match(port_key(Protocol::Tcp, 30000), 14),
            "-p tcp -m tcp --dport 30000:30015"
        );
        assert_eq!(
            KeyKind::ProtoPort.prefix_match(port_key(Protocol::Sctp, 30001), 18),
            "-p sctp -m sctp --dport 30001"
        );
        assert_eq!(
            KeyKind::Destination(IpFamily::V6).prefix_match(ip_key("fd00::".parse().unwrap()), 8),
            "-d fd00::/8"
        );
    }
}
