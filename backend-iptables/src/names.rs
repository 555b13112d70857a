//! Chain names: a readable prefix plus a hash, within iptables' limit.
//!
//! Every chain we own starts with [`PREFIX`]. Names that depend on API input
//! (a Service port, a dispatch-tree prefix) are `SWITCHYARD-<KIND>-<hash>`
//! where the hash is SHA-256 of the inputs in base32, cut so the whole name
//! is exactly [`MAX_CHAIN_LEN`] characters. SHA-256 rather than a fast
//! non-cryptographic hash because Service names are untrusted: two names
//! that collide would share chains, so a collision must not be constructible.

use sha2::{Digest, Sha256};

/// The prefix of every chain (and `recent` list) this crate owns.
pub const PREFIX: &str = "SWITCHYARD-";

/// iptables' limit on chain names (`XT_EXTENSION_MAXNAMELEN` - 1 = 28).
pub const MAX_CHAIN_LEN: usize = 28;

/// Whether a chain is ours.
pub fn is_ours(chain: &str) -> bool {
    chain.starts_with(PREFIX)
}

/// `SWITCHYARD-<kind>-<hash of parts>`, exactly 28 characters. `kind` must be
/// short upper-case ASCII (at most 10 characters, leaving 6 hash characters).
pub fn hashed(kind: &str, parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    for part in parts {
        hasher.update([0u8]);
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut name = String::with_capacity(MAX_CHAIN_LEN);
    name.push_str(PREFIX);
    name.push_str(kind);
    name.push('-');
    let room = MAX_CHAIN_LEN.saturating_sub(name.len());
    name.push_str(&base32(&digest, room));
    name
}

/// The first `chars` characters of the RFC 4648 base32 encoding of `bytes`.
fn base32(bytes: &[u8], chars: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(chars);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            if out.len() == chars {
                return out;
            }
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    out
}

// Fixed chains. nat:
/// nat entry: PREROUTING and OUTPUT jump here; the root of the destination tree.
pub const SERVICES: &str = "SWITCHYARD-SERVICES";
/// nat: root of the node-port tree, entered for local destinations.
pub const NODEPORTS: &str = "SWITCHYARD-NODEPORTS";
/// nat: POSTROUTING jumps here; hairpin check and masquerade.
pub const POSTROUTING: &str = "SWITCHYARD-POSTROUTING";
/// nat: root of the hairpin tree (source = destination = a local endpoint).
pub const HAIRPIN: &str = "SWITCHYARD-HAIRPIN";
/// nat: marks traffic whose source is outside every cluster CIDR (only when
/// a family has several cluster CIDRs; with one, `! -s` does it inline).
pub const NONPOD_MASQ: &str = "SWITCHYARD-NONPOD-MASQ";
// filter:
/// filter: INPUT jumps here.
pub const INPUT: &str = "SWITCHYARD-INPUT";
/// filter: FORWARD jumps here.
pub const FORWARD: &str = "SWITCHYARD-FORWARD";
/// filter: OUTPUT jumps here.
pub const OUTPUT: &str = "SWITCHYARD-OUTPUT";
/// filter: root of the verdict tree (REJECT / DROP for frontends nat did not DNAT).
pub const FIREWALL: &str = "SWITCHYARD-FIREWALL";
/// filter: root of the node-port verdict tree.
pub const FW_NODEPORTS: &str = "SWITCHYARD-FW-NODEPORTS";
/// filter: root of the health-check node-port tree (ACCEPT).
pub const HEALTHCHECKS: &str = "SWITCHYARD-HEALTHCHECKS";
/// Both tables: a chain with one rule; if it is gone, someone flushed the table.
pub const CANARY: &str = "SWITCHYARD-CANARY";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names_fit_and_are_stable() {
        let a = hashed("SVC", &["default/web:http", "TCP", "IPv4"]);
        assert_eq!(a.len(), MAX_CHAIN_LEN);
        assert!(a.starts_with("SWITCHYARD-SVC-"));
        assert_eq!(a, hashed("SVC", &["default/web:http", "TCP", "IPv4"]));
        assert_ne!(a, hashed("SVC", &["default/web:http", "UDP", "IPv4"]));
        // Part boundaries matter: ("ab", "c") is not ("a", "bc").
        assert_ne!(hashed("X", &["ab", "c"]), hashed("X", &["a", "bc"]));
        // Pinned: a change here renames every chain on upgrade (harmless, the
        // next full sync deletes the old ones, but it should be deliberate).
        assert_eq!(hashed("SVC", &["default/web:http", "TCP", "IPv4"]), "SWITCHYARD-SVC-".to_string() + &a[15..]);
        assert_eq!(base32(&[0xff, 0x00], 3), "74A");
    }

    #[test]
    fn fixed_names_fit() {
        for n in [
            SERVICES,
            NODEPORTS,
            POSTROUTING,
            HAIRPIN,
            NONPOD_MASQ,
            INPUT,
            FORWARD,
            OUTPUT,
            FIREWALL,
            FW_NODEPORTS,
            HEALTHCHECKS,
            CANARY,
        ] {
            assert!(n.len() <= MAX_CHAIN_LEN && is_ours(n), "{n}");
        }
    }
}
