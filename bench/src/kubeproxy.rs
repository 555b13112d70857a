//! Reference rows: rules in kube-proxy's own shape, loaded with the tools
//! kube-proxy uses, written here from the layout kube-proxy documents (no
//! kube-proxy code).
//!
//! - **iptables** (`iptables-restore`, nft or legacy implementation): nat
//!   `KUBE-SERVICES` holds one rule per Service port, walked in order; each
//!   jumps to `KUBE-SVC-<hash>`, which marks off-cluster sources for
//!   masquerade and picks one `KUBE-SEP-<hash>` per endpoint with
//!   `statistic --probability 1/k`; a SEP marks hairpin traffic and DNATs.
//!   Node ports: `KUBE-NODEPORTS` (last rule of KUBE-SERVICES, `addrtype LOCAL`)
//!   → `KUBE-EXT-<hash>` (mark, jump SVC). Masquerade in `KUBE-POSTROUTING`,
//!   filter-table `KUBE-FORWARD`, `KUBE-SERVICES`, `KUBE-EXTERNAL-SERVICES`,
//!   `KUBE-NODEPORTS`, `KUBE-PROXY-FIREWALL` chains as kube-proxy installs
//!   them. A partial sync (kube-proxy ≥ 1.28) rewrites every top-level chain
//!   in full (so all of KUBE-SERVICES) plus the chains of the changed Service.
//! - **nftables** (`nft -f`), table `ip kube-proxy`: one verdict map
//!   `service-ips` keyed by (address, protocol, port) → `goto service-…`
//!   chain, which marks for masquerade and spreads with `numgen random mod k
//!   vmap` over `endpoint-…` chains that DNAT; `service-nodeports` map behind a
//!   `fib daddr type local` rule; masquerade by mark in `masquerading`. A
//!   change is one transaction touching only that Service's chains.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use crate::lab::{CLUSTER_CIDR, POD_PORT};
use crate::objects::{NAMESPACE, SERVICE_PORT, Svc};

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// 16 base32 characters of SHA-256 over `parts` (kube-proxy's chain-name length).
fn hash16(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    let mut bits: u128 = 0;
    for b in &d[..10] {
        bits = (bits << 8) | u128::from(*b);
    }
    (0..16).map(|i| B32[((bits >> (75 - 5 * i)) & 31) as usize] as char).collect()
}

fn port_name(s: &Svc) -> String {
    format!("{NAMESPACE}/{}:http", s.name)
}

fn svc_chain(s: &Svc) -> String {
    format!("KUBE-SVC-{}", hash16(&[&port_name(s), "tcp"]))
}

fn ext_chain(s: &Svc) -> String {
    format!("KUBE-EXT-{}", hash16(&[&port_name(s), "tcp"]))
}

fn sep_chain(s: &Svc, ep: Ipv4Addr) -> String {
    format!("KUBE-SEP-{}", hash16(&[&port_name(s), "tcp", &format!("{ep}:{POD_PORT}")]))
}

const NAT_TOP: &[&str] = &["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"];
const FILTER_TOP: &[&str] =
    &["KUBE-FORWARD", "KUBE-PROXY-FIREWALL", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS"];

fn service_rules(out: &mut String, s: &Svc) {
    let pn = port_name(s);
    let svc = svc_chain(s);
    let _ = writeln!(
        out,
        "-A {svc} ! -s {CLUSTER_CIDR} -d {}/32 -p tcp -m comment --comment \"{pn} cluster IP\" -m tcp --dport {SERVICE_PORT} -j KUBE-MARK-MASQ",
        s.cluster_ip
    );
    let k = s.endpoints.len();
    for (i, ep) in s.endpoints.iter().enumerate() {
        let sep = sep_chain(s, *ep);
        if i + 1 < k {
            let p = 1.0 / (k - i) as f64;
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{pn} -> {ep}:{POD_PORT}\" -m statistic --mode random --probability {p:.10} -j {sep}"
            );
        } else {
            let _ = writeln!(out, "-A {svc} -m comment --comment \"{pn} -> {ep}:{POD_PORT}\" -j {sep}");
        }
    }
}

fn endpoint_rules(out: &mut String, s: &Svc, ep: Ipv4Addr) {
    let pn = port_name(s);
    let sep = sep_chain(s, ep);
    let _ = writeln!(out, "-A {sep} -s {ep}/32 -m comment --comment {pn} -j KUBE-MARK-MASQ");
    let _ = writeln!(out, "-A {sep} -p tcp -m comment --comment {pn} -m tcp -j DNAT --to-destination {ep}:{POD_PORT}");
}

fn nat_top_rules(out: &mut String, svcs: &[Svc]) {
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    out.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    for s in svcs {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{} cluster IP\" -m tcp --dport {SERVICE_PORT} -j {}",
            s.cluster_ip,
            port_name(s),
            svc_chain(s)
        );
        if let Some(np) = s.node_port {
            let _ = writeln!(
                out,
                "-A KUBE-NODEPORTS -p tcp -m comment --comment {} -m tcp --dport {np} -j {}",
                port_name(s),
                ext_chain(s)
            );
        }
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
}

fn filter_table(out: &mut String, hooks: bool) {
    out.push_str("*filter\n");
    for c in FILTER_TOP {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    if hooks {
        out.push_str("-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n");
        out.push_str("-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n");
        out.push_str("-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n");
        out.push_str("-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n");
        out.push_str("-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n");
        out.push_str("-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
        out.push_str("-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n");
        out.push_str("-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n");
        out.push_str("-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    }
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    out.push_str(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n",
    );
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    out.push_str("COMMIT\n");
}

/// The whole state, as kube-proxy's first sync writes it (plus the hooks it
/// adds to the built-in chains).
pub fn iptables_full(svcs: &[Svc]) -> String {
    let mut out = String::with_capacity(svcs.len() * 1200);
    filter_table(&mut out, true);
    out.push_str("*nat\n");
    for c in NAT_TOP {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for s in svcs {
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(s));
        if s.node_port.is_some() {
            let _ = writeln!(out, ":{} - [0:0]", ext_chain(s));
        }
        for ep in &s.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(s, *ep));
        }
    }
    out.push_str("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    out.push_str("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    out.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    nat_top_rules(&mut out, svcs);
    for s in svcs {
        if s.node_port.is_some() {
            let ext = ext_chain(s);
            let _ = writeln!(
                out,
                "-A {ext} -m comment --comment \"masquerade traffic for {} external destinations\" -j KUBE-MARK-MASQ",
                port_name(s)
            );
            let _ = writeln!(out, "-A {ext} -j {}", svc_chain(s));
        }
        service_rules(&mut out, s);
        for ep in &s.endpoints {
            endpoint_rules(&mut out, s, *ep);
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// kube-proxy's partial sync after `old` became `new` (same Service): every
/// top-level chain rewritten, the Service's chain and its new endpoint
/// chains written, the old endpoint chains deleted.
pub fn iptables_change(svcs: &[Svc], old: &Svc, new: &Svc) -> String {
    let mut out = String::with_capacity(svcs.len() * 200);
    filter_table(&mut out, false);
    out.push_str("*nat\n");
    for c in NAT_TOP {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let _ = writeln!(out, ":{} - [0:0]", svc_chain(new));
    let added: Vec<Ipv4Addr> = new.endpoints.iter().filter(|e| !old.endpoints.contains(e)).copied().collect();
    for ep in &added {
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(new, *ep));
    }
    // Stale chains are declared (flushed) before `-X`: a chain with rules cannot be deleted.
    let removed: Vec<Ipv4Addr> = old.endpoints.iter().filter(|e| !new.endpoints.contains(e)).copied().collect();
    for ep in &removed {
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(old, *ep));
    }
    nat_top_rules(&mut out, svcs);
    service_rules(&mut out, new);
    for ep in &added {
        endpoint_rules(&mut out, new, *ep);
    }
    for ep in &removed {
        let _ = writeln!(out, "-X {}", sep_chain(old, *ep));
    }
    out.push_str("COMMIT\n");
    out
}

const TABLE: &str = "ip kube-proxy";

fn nft_service_chain(s: &Svc) -> String {
    format!("service-{}-{NAMESPACE}/{}/tcp/http", &hash16(&[&port_name(s), "tcp"])[..8], s.name)
}

fn nft_external_chain(s: &Svc) -> String {
    format!("external-{}-{NAMESPACE}/{}/tcp/http", &hash16(&[&port_name(s), "tcp"])[..8], s.name)
}

fn nft_endpoint_chain(s: &Svc, ep: Ipv4Addr) -> String {
    let h = hash16(&[&port_name(s), "tcp", &format!("{ep}:{POD_PORT}")]);
    format!("endpoint-{}-{NAMESPACE}/{}/tcp/http__{ep}/{POD_PORT}", &h[..8], s.name)
}

fn nft_service(out: &mut String, s: &Svc) {
    let chain = nft_service_chain(s);
    let _ = writeln!(out, "add chain {TABLE} {chain}");
    let _ = writeln!(out, "flush chain {TABLE} {chain}");
    let _ = writeln!(
        out,
        "add rule {TABLE} {chain} ip daddr {} tcp dport {SERVICE_PORT} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        s.cluster_ip
    );
    let targets: Vec<String> =
        s.endpoints.iter().enumerate().map(|(i, ep)| format!("{i} : goto {}", nft_endpoint_chain(s, *ep))).collect();
    let _ = writeln!(
        out,
        "add rule {TABLE} {chain} numgen random mod {} vmap {{ {} }}",
        s.endpoints.len(),
        targets.join(" , ")
    );
}

fn nft_endpoint(out: &mut String, s: &Svc, ep: Ipv4Addr) {
    let chain = nft_endpoint_chain(s, ep);
    let _ = writeln!(out, "add chain {TABLE} {chain}");
    let _ = writeln!(out, "flush chain {TABLE} {chain}");
    let _ = writeln!(out, "add rule {TABLE} {chain} ip saddr {ep} jump mark-for-masquerade");
    let _ = writeln!(out, "add rule {TABLE} {chain} meta l4proto tcp dnat to {ep}:{POD_PORT}");
}

/// The whole table, as kube-proxy's nftables mode writes it on its first sync.
pub fn nft_full(svcs: &[Svc]) -> String {
    let mut out = String::with_capacity(svcs.len() * 900);
    let _ = writeln!(out, "add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}");
    for (chain, hook) in [
        ("nat-prerouting", "type nat hook prerouting priority -100 ;"),
        ("nat-output", "type nat hook output priority -100 ;"),
        ("nat-postrouting", "type nat hook postrouting priority 100 ;"),
        ("filter-forward", "type filter hook forward priority -110 ;"),
    ] {
        let _ = writeln!(out, "add chain {TABLE} {chain} {{ {hook} }}");
    }
    for chain in ["mark-for-masquerade", "masquerading", "services"] {
        let _ = writeln!(out, "add chain {TABLE} {chain}");
    }
    let _ = writeln!(out, "add rule {TABLE} mark-for-masquerade mark set mark or 0x4000");
    let _ = writeln!(out, "add rule {TABLE} masquerading mark and 0x4000 == 0 return");
    let _ = writeln!(out, "add rule {TABLE} masquerading mark set mark xor 0x4000");
    let _ = writeln!(out, "add rule {TABLE} masquerading masquerade fully-random");
    let _ = writeln!(out, "add rule {TABLE} nat-prerouting jump services");
    let _ = writeln!(out, "add rule {TABLE} nat-output jump services");
    let _ = writeln!(out, "add rule {TABLE} nat-postrouting jump masquerading");
    let _ = writeln!(out, "add rule {TABLE} filter-forward ct state invalid drop");
    let _ = writeln!(
        out,
        "add map {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );
    let _ = writeln!(
        out,
        "add map {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"
    );
    let _ = writeln!(out, "add rule {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips");
    let _ = writeln!(
        out,
        "add rule {TABLE} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    );
    for s in svcs {
        for ep in &s.endpoints {
            nft_endpoint(&mut out, s, *ep);
        }
        nft_service(&mut out, s);
        if let Some(np) = s.node_port {
            let ext = nft_external_chain(s);
            let _ = writeln!(out, "add chain {TABLE} {ext}");
            let _ = writeln!(out, "add rule {TABLE} {ext} jump mark-for-masquerade");
            let _ = writeln!(out, "add rule {TABLE} {ext} goto {}", nft_service_chain(s));
            let _ = writeln!(out, "add element {TABLE} service-nodeports {{ tcp . {np} : goto {ext} }}");
        }
        let _ = writeln!(
            out,
            "add element {TABLE} service-ips {{ {} . tcp . {SERVICE_PORT} : goto {} }}",
            s.cluster_ip,
            nft_service_chain(s)
        );
    }
    out
}

/// One transaction for `old` → `new`: new endpoint chains, the Service
/// chain rewritten, old endpoint chains deleted.
pub fn nft_change(old: &Svc, new: &Svc) -> String {
    let mut out = String::new();
    for ep in new.endpoints.iter().filter(|e| !old.endpoints.contains(e)) {
        nft_endpoint(&mut out, new, *ep);
    }
    nft_service(&mut out, new);
    for ep in old.endpoints.iter().filter(|e| !new.endpoints.contains(e)) {
        let _ = writeln!(out, "delete chain {TABLE} {}", nft_endpoint_chain(old, *ep));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects;

    #[test]
    fn names_are_kube_proxy_sized_and_distinct() {
        let svcs = objects::all(3, 2);
        assert_eq!(svc_chain(&svcs[0]).len(), "KUBE-SVC-".len() + 16);
        assert_ne!(svc_chain(&svcs[0]), svc_chain(&svcs[1]));
        assert!(svc_chain(&svcs[0]).len() <= 28, "iptables chain names are at most 28 characters");
    }

    #[test]
    fn full_payload_shape() {
        let svcs = objects::all(3, 2);
        let p = iptables_full(&svcs);
        assert_eq!(p.matches("-A KUBE-SERVICES -d").count(), 3);
        assert!(p.trim_end().ends_with("COMMIT"));
        assert!(p.contains("--probability 0.5000000000"));
        let n = nft_full(&svcs);
        assert_eq!(n.matches("add element ip kube-proxy service-ips").count(), 3);
        assert_eq!(n.matches("service-nodeports {").count(), 2, "map declaration and one element");
    }

    #[test]
    fn change_payloads_swap_one_endpoint() {
        let old = objects::svc(2, 3, 2, 0);
        let new = objects::svc(2, 3, 2, 1);
        let svcs = objects::all(3, 2);
        let p = iptables_change(&svcs, &old, &new);
        assert_eq!(p.matches("\n-X KUBE-SEP-").count(), 1);
        assert_eq!(p.matches("-j DNAT").count(), 1);
        let n = nft_change(&old, &new);
        assert_eq!(n.matches("delete chain").count(), 1);
        assert!(n.contains(&new.endpoints[0].to_string()));
    }
}
