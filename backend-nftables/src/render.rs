//! Rendering decisions into nf_tables objects.
//!
//! The rules are fixed (a few dozen, plus one chain per distinct
//! *behaviour*: class of source, endpoint count, masquerade, affinity
//! timeout); Services live in set and map elements only, so a change of
//! endpoints is a handful of element updates of data maps and never
//! touches a rule or a verdict. That matters beyond size: adding a rule
//! with a verdict or a nat expression, or a jump element to a verdict map,
//! makes the kernel re-validate every rule reachable in the table on
//! commit (what bounds iptables-nft's partial syncs, see backend-iptables'
//! README); element updates of data maps do not.
//!
//! ```text
//!  filter prerouting (prio -110) ─ ct state new ─► vmap @firewall (daddr.proto.dport → jump fw-<h>: ranges or drop)
//!                                  ct state new ─► check
//!  filter output (prio -110) ───── ct state new ─► check
//!     check: goto chk-node (fib saddr type local) | chk-pod (saddr in a cluster CIDR) | chk-external
//!     chk-<class>: @frontends (class.daddr.proto.dport; node ports: address 0 on local
//!                  destinations) → (behaviour, timeout, route); vmap @filter-behaviours:
//!                  behaviour → return | drop | goto reject;  daddr @cluster-ips drop
//!  nat prerouting / output (prio -100) ─► services: goto svc-<class> as above
//!     svc-<class>: the same lookup; vmap @behaviours (behaviour.timeout) → goto fwd-<behaviour>
//!     fwd-<b>: the lookup again, then in the same rule: [affinity: @affinity (route.saddr) →
//!              endpoint, still in @affinity-members, refresh] or numgen random mod N, @endpoints
//!              (route.slot) → endpoint [, remember in @affinity]; [mark]; dnat
//!  nat postrouting (prio 100): hairpin (ct status dnat, saddr.daddr @hairpin) → mark;
//!            marked → unmark, masquerade fully-random
//! ```
//!
//! Why a rule repeats the lookup instead of passing registers on: since
//! Linux 6.11 nf_tables refuses (`ENODATA`) a rule that reads a register it
//! did not write itself, so every rule is self-contained; the chain a rule
//! jumps to is what carries information from one rule to the next.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use proxy_core::{Frontend, FrontendKind, IpFamily, MasqueradeConfig, NodePortAddresses, Protocol, ServicePortPlan};
use sha2::{Digest, Sha256};

use crate::decide::{self, Action, CLASSES};
use crate::netlink::nft::{self, CmpOp, CtKey, MetaKey, PayloadBase, reg, set_flags};
use crate::netlink::{Elem, ElemData, Expr, Hook, HookNum, SetData, SetSpec, Verdict};

/// Our table's name, in the `ip` and the `ip6` family.
pub const TABLE: &str = "switchyard";

/// Class values in the `class` register (and in keys).
pub const CLASS_POD: u32 = 1;
pub const CLASS_NODE: u32 = 2;
pub const CLASS_EXTERNAL: u32 = 3;

pub const ACTION_FORWARD: u32 = 1;
pub const ACTION_DROP: u32 = 2;
pub const ACTION_REJECT: u32 = 3;

/// Set names.
pub mod sets {
    pub const FRONTENDS: &str = "frontends";
    pub const ENDPOINTS: &str = "endpoints";
    pub const MEMBERS: &str = "affinity-members";
    pub const AFFINITY: &str = "affinity";
    pub const HAIRPIN: &str = "hairpin";
    pub const CLUSTER_IPS: &str = "cluster-ips";
    pub const FIREWALL: &str = "firewall";
    pub const BEHAVIOURS: &str = "behaviours";
    pub const FILTER_BEHAVIOURS: &str = "filter-behaviours";
}

/// The sets holding per-Service elements, in the order they are written.
pub const SERVICE_SETS: [&str; 6] =
    [sets::FRONTENDS, sets::ENDPOINTS, sets::MEMBERS, sets::HAIRPIN, sets::CLUSTER_IPS, sets::FIREWALL];

/// Everything rendering depends on besides the plans, for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderConfig {
    pub family: IpFamily,
    pub masquerade_mark: u32,
    pub masquerade: MasqueradeConfig,
    pub nodeport_addresses: NodePortAddresses,
    /// The node's primary addresses of this family.
    pub node_ips: Vec<IpAddr>,
}

impl RenderConfig {
    pub fn new(family: IpFamily) -> Self {
        RenderConfig {
            family,
            masquerade_mark: 0x4000,
            masquerade: MasqueradeConfig::default(),
            nodeport_addresses: NodePortAddresses::All,
            node_ips: Vec::new(),
        }
    }

    pub fn nfproto(&self) -> u8 {
        nfproto(self.family)
    }

    /// Address length in bytes.
    fn alen(&self) -> u32 {
        alen(self.family)
    }

    fn saddr(&self, dreg: u32) -> Expr {
        let offset = if self.family == IpFamily::V4 { 12 } else { 8 };
        Expr::Payload { dreg, base: PayloadBase::Network, offset, len: self.alen() }
    }

    fn daddr(&self, dreg: u32) -> Expr {
        let offset = if self.family == IpFamily::V4 { 16 } else { 24 };
        Expr::Payload { dreg, base: PayloadBase::Network, offset, len: self.alen() }
    }

    fn cluster_cidrs(&self) -> Vec<IpNet> {
        let v4 = self.family == IpFamily::V4;
        self.masquerade.cluster_cidrs.iter().filter(|c| matches!(c, IpNet::V4(_)) == v4).copied().collect()
    }
}

pub fn nfproto(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => nft::NFPROTO_IPV4,
        IpFamily::V6 => nft::NFPROTO_IPV6,
    }
}

pub fn alen(family: IpFamily) -> u32 {
    match family {
        IpFamily::V4 => 4,
        IpFamily::V6 => 16,
    }
}

fn u32b(v: u32) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A protocol number padded to a register, as `meta l4proto` stores it.
fn proto_bytes(p: Protocol) -> [u8; 4] {
    [p.number(), 0, 0, 0]
}

/// A port as `th dport` stores it: big-endian, padded to a register.
fn port_bytes(port: u16) -> [u8; 4] {
    let b = port.to_be_bytes();
    [b[0], b[1], 0, 0]
}

/// `reg & mask == net`
fn in_net(cfg: &RenderConfig, load: Expr, net: &IpNet, dreg: u32) -> Vec<Expr> {
    let mask = ip_bytes(net.netmask());
    let zero = vec![0u8; mask.len()];
    let _ = cfg;
    vec![
        load,
        Expr::Bitwise { sreg: dreg, dreg, mask, xor: zero },
        Expr::Cmp { sreg: dreg, op: CmpOp::Eq, data: ip_bytes(net.network()) },
    ]
}

fn ct_new() -> Vec<Expr> {
    vec![
        Expr::Ct { dreg: reg(1), key: CtKey::State },
        Expr::Bitwise { sreg: reg(1), dreg: reg(1), mask: u32b(nft::CT_STATE_NEW), xor: u32b(0) },
        Expr::Cmp { sreg: reg(1), op: CmpOp::Neq, data: u32b(0) },
    ]
}

/// `meta mark set mark | bit` (`clear`: `& ~bit`), through `scratch`.
fn set_mark(bit: u32, clear: bool, scratch: u32) -> Vec<Expr> {
    vec![
        Expr::MetaGet { dreg: scratch, key: MetaKey::Mark },
        Expr::Bitwise { sreg: scratch, dreg: scratch, mask: u32b(!bit), xor: u32b(if clear { 0 } else { bit }) },
        Expr::MetaSet { sreg: scratch, key: MetaKey::Mark },
    ]
}

/// A chain of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<Hook>,
    pub rules: Vec<Vec<Expr>>,
}

/// What traffic of one class to one frontend does, apart from which
/// endpoints: the rules it needs are shared by every frontend that behaves
/// alike, and the frontend's element names its behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Behaviour {
    pub class: u32,
    /// A node port (looked up with address 0).
    pub node_port: bool,
    pub action: u32,
    pub masquerade: bool,
    /// Endpoints (forward only).
    pub count: u32,
    /// sessionAffinity timeout in seconds, 0 for none.
    pub timeout: u32,
}

impl Behaviour {
    /// The id in frontend elements: class (2 bits), node port, action (2
    /// bits), masquerade, count (26 bits). The timeout travels beside it.
    pub fn id(&self) -> u32 {
        self.class
            | u32::from(self.node_port) << 2
            | self.action << 3
            | u32::from(self.masquerade) << 5
            | self.count << 6
    }

    pub fn from_id(id: u32, timeout: u32) -> Behaviour {
        Behaviour {
            class: id & 3,
            node_port: id & 4 != 0,
            action: (id >> 3) & 3,
            masquerade: id & 32 != 0,
            count: id >> 6,
            timeout,
        }
    }

    fn chain(&self) -> String {
        let class = match self.class {
            CLASS_POD => "pod",
            CLASS_NODE => "node",
            _ => "external",
        };
        let kind = if self.node_port { "nodeport" } else { "address" };
        let masq = if self.masquerade { "-masq" } else { "" };
        let aff = if self.timeout > 0 { format!("-affinity{}", self.timeout) } else { String::new() };
        format!("fwd-{class}-{kind}-{}{masq}{aff}", self.count)
    }
}

/// The fixed part of the table: chains, rules and sets, and the behaviour
/// chains and verdict-map elements of the behaviours in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skeleton {
    pub sets: Vec<SetSpec>,
    pub chains: Vec<Chain>,
    pub elements: Vec<(&'static str, Elem)>,
}

/// Register layout of the forwarding rules, by family. The frontend key is
/// class (r0), address, protocol, port; its data lands in r0..r2 (behaviour,
/// timeout, route), so that `route.slot` and `route.saddr` are contiguous
/// keys from r2; the endpoint (address, port, route) lands after them.
struct Regs {
    key_proto: u32,
    behaviour: u32,
    route: u32,
    after_route: u32,
    endpoint: u32,
    endpoint_port: u32,
}

fn regs(family: IpFamily) -> Regs {
    let a = alen(family) / 4;
    Regs {
        key_proto: reg(1 + a),
        behaviour: reg(0),
        route: reg(2),
        after_route: reg(3),
        endpoint: reg(3 + a),
        endpoint_port: reg(3 + 2 * a),
    }
}

/// `class . daddr . proto . dport` into r0.. (node ports: address 0), then
/// the frontend lookup into r0..r2.
fn frontend_lookup(cfg: &RenderConfig, class: u32, node_port: bool) -> Vec<Expr> {
    let r = regs(cfg.family);
    let mut v = vec![Expr::Immediate { dreg: reg(0), data: u32b(class) }, cfg.daddr(reg(1))];
    if node_port {
        let zero = vec![0u8; cfg.alen() as usize];
        v.push(Expr::Bitwise { sreg: reg(1), dreg: reg(1), mask: zero.clone(), xor: zero });
    }
    v.push(Expr::MetaGet { dreg: r.key_proto, key: MetaKey::L4Proto });
    v.push(Expr::Payload { dreg: r.key_proto + 1, base: PayloadBase::Transport, offset: 2, len: 2 });
    v.push(Expr::Lookup { set: sets::FRONTENDS.into(), sreg: reg(0), dreg: Some(r.behaviour), invert: false });
    v
}

/// The conditions under which a destination is a node-port address
/// (`--nodeport-addresses`), one rule's worth each. Loopback never is (as
/// kube-proxy's nftables mode: no `route_localnet`).
fn nodeport_conditions(cfg: &RenderConfig) -> Vec<Vec<Expr>> {
    let local = || {
        vec![
            Expr::FibAddrType { dreg: reg(1), daddr: true },
            Expr::Cmp { sreg: reg(1), op: CmpOp::Eq, data: u32b(nft::RTN_LOCAL) },
        ]
    };
    let not_loopback = || -> Vec<Expr> {
        match cfg.family {
            IpFamily::V4 => vec![
                cfg.daddr(reg(1)),
                Expr::Bitwise { sreg: reg(1), dreg: reg(1), mask: vec![255, 0, 0, 0], xor: vec![0; 4] },
                Expr::Cmp { sreg: reg(1), op: CmpOp::Neq, data: vec![127, 0, 0, 0] },
            ],
            IpFamily::V6 => vec![
                cfg.daddr(reg(1)),
                Expr::Cmp { sreg: reg(1), op: CmpOp::Neq, data: ip_bytes(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)) },
            ],
        }
    };
    let of_family = |ip: &IpAddr| IpFamily::of(ip) == cfg.family;
    match &cfg.nodeport_addresses {
        NodePortAddresses::All => {
            let mut c = local();
            c.extend(not_loopback());
            vec![c]
        }
        NodePortAddresses::Primary => cfg
            .node_ips
            .iter()
            .filter(|ip| of_family(ip) && !ip.is_loopback())
            .map(|ip| vec![cfg.daddr(reg(1)), Expr::Cmp { sreg: reg(1), op: CmpOp::Eq, data: ip_bytes(*ip) }])
            .collect(),
        NodePortAddresses::Cidrs(cidrs) => cidrs
            .iter()
            .filter(|c| of_family(&c.network()))
            .map(|c| {
                let mut r = in_net(cfg, cfg.daddr(reg(1)), c, reg(1));
                r.extend(local());
                r.extend(not_loopback());
                r
            })
            .collect(),
    }
}

const CLASS_NAMES: [(u32, &str); 3] = [(CLASS_NODE, "node"), (CLASS_POD, "pod"), (CLASS_EXTERNAL, "external")];

/// The rules that send each class of source to its chain (`<prefix>-<class>`).
fn classify(cfg: &RenderConfig, prefix: &str) -> Vec<Vec<Expr>> {
    let to = |class: &str| Expr::Verdict(Verdict::Goto(format!("{prefix}-{class}")));
    // The node first (`Snapshot::classify_source`: one of the node's own
    // addresses is the node even inside a cluster CIDR), then pods.
    let mut rules = vec![vec![
        Expr::FibAddrType { dreg: reg(1), daddr: false },
        Expr::Cmp { sreg: reg(1), op: CmpOp::Eq, data: u32b(nft::RTN_LOCAL) },
        to("node"),
    ]];
    for c in cfg.cluster_cidrs() {
        let mut rule = in_net(cfg, cfg.saddr(reg(1)), &c, reg(1));
        rule.push(to("pod"));
        rules.push(rule);
    }
    rules.push(vec![to("external")]);
    rules
}

/// Builds the skeleton for a configuration and the behaviours in use.
pub fn skeleton(cfg: &RenderConfig, behaviours: &BTreeSet<Behaviour>) -> Skeleton {
    let a = cfg.alen();
    let r = regs(cfg.family);
    let mark = cfg.masquerade_mark;
    use nft::types::{INET_PROTOCOL as PROTO, INET_SERVICE as PORT, MARK};
    let addr = if cfg.family == IpFamily::V4 { nft::types::IPADDR } else { nft::types::IP6ADDR };
    let spec = |name: &str, flags: u32, key: &[u32], key_len: u32, data: Option<SetData>| SetSpec {
        name: name.to_string(),
        flags,
        key_type: nft::concat(key),
        key_len,
        data,
        timeout_ms: None,
    };
    let endpoint = SetData::Value(nft::concat(&[addr, PORT, MARK]), a + 8);
    let sets = vec![
        spec(
            sets::FRONTENDS,
            0,
            &[MARK, addr, PROTO, PORT],
            4 + a + 8,
            Some(SetData::Value(nft::concat(&[MARK, MARK, MARK]), 12)),
        ),
        spec(sets::ENDPOINTS, 0, &[MARK, MARK], 8, Some(endpoint)),
        spec(sets::MEMBERS, 0, &[addr, PORT, MARK], a + 8, None),
        spec(sets::AFFINITY, set_flags::TIMEOUT | set_flags::EVAL, &[MARK, addr], 4 + a, Some(endpoint)),
        spec(sets::HAIRPIN, 0, &[addr, addr], 2 * a, None),
        spec(sets::CLUSTER_IPS, 0, &[addr], a, None),
        spec(sets::FIREWALL, 0, &[addr, PROTO, PORT], a + 8, Some(SetData::Verdict)),
        spec(sets::BEHAVIOURS, 0, &[MARK, MARK], 8, Some(SetData::Verdict)),
        spec(sets::FILTER_BEHAVIOURS, 0, &[MARK], 4, Some(SetData::Verdict)),
    ];
    let hook = |num, priority, kind| Some(Hook { num, priority, kind });
    let mut chains = Vec::new();
    let mut elements = Vec::new();

    // Filter side: drop and reject, before DNAT.
    chains.push(Chain { name: "check".into(), hook: None, rules: classify(cfg, "chk") });
    for (class, name) in CLASS_NAMES {
        let mut rules = Vec::new();
        let behave =
            || Expr::Lookup { set: sets::FILTER_BEHAVIOURS.into(), sreg: r.behaviour, dreg: Some(0), invert: false };
        let mut fe = frontend_lookup(cfg, class, false);
        fe.push(behave());
        rules.push(fe);
        for cond in nodeport_conditions(cfg) {
            let mut np = cond;
            np.extend(frontend_lookup(cfg, class, true));
            np.push(behave());
            rules.push(np);
        }
        // A ClusterIP on a port no Service has.
        rules.push(vec![
            cfg.daddr(reg(1)),
            Expr::Lookup { set: sets::CLUSTER_IPS.into(), sreg: reg(1), dreg: None, invert: false },
            Expr::Verdict(Verdict::Drop),
        ]);
        chains.push(Chain { name: format!("chk-{name}"), hook: None, rules });
    }
    let (icmp_code, tcp) = (if cfg.family == IpFamily::V4 { 3 } else { 4 }, Protocol::Tcp.number());
    chains.push(Chain {
        name: "reject".into(),
        hook: None,
        rules: vec![
            // A TCP reset for TCP: "connection refused" at once, also for the
            // node's own clients (see backend-iptables' REJECT comment).
            vec![
                Expr::MetaGet { dreg: reg(1), key: MetaKey::L4Proto },
                Expr::Cmp { sreg: reg(1), op: CmpOp::Eq, data: vec![tcp, 0, 0, 0] },
                Expr::Reject { tcp_reset: true, icmp_code: 0 },
            ],
            vec![Expr::Reject { tcp_reset: false, icmp_code }],
        ],
    });
    let mut fw = ct_new();
    fw.extend([
        cfg.daddr(reg(1)),
        Expr::MetaGet { dreg: reg(1 + a / 4), key: MetaKey::L4Proto },
        Expr::Payload { dreg: reg(2 + a / 4), base: PayloadBase::Transport, offset: 2, len: 2 },
        Expr::Lookup { set: sets::FIREWALL.into(), sreg: reg(1), dreg: Some(0), invert: false },
    ]);
    let mut to_check = ct_new();
    to_check.push(Expr::Verdict(Verdict::Jump("check".into())));
    chains.push(Chain {
        name: "filter-prerouting".into(),
        hook: hook(HookNum::Prerouting, -110, "filter"),
        rules: vec![fw, to_check.clone()],
    });
    chains.push(Chain {
        name: "filter-output".into(),
        hook: hook(HookNum::Output, -110, "filter"),
        rules: vec![to_check],
    });

    // NAT side.
    chains.push(Chain { name: "services".into(), hook: None, rules: classify(cfg, "svc") });
    for (class, name) in CLASS_NAMES {
        let behave = || Expr::Lookup { set: sets::BEHAVIOURS.into(), sreg: r.behaviour, dreg: Some(0), invert: false };
        let mut rules = Vec::new();
        let mut fe = frontend_lookup(cfg, class, false);
        fe.push(behave());
        rules.push(fe);
        for cond in nodeport_conditions(cfg) {
            let mut np = cond;
            np.extend(frontend_lookup(cfg, class, true));
            np.push(behave());
            rules.push(np);
        }
        chains.push(Chain { name: format!("svc-{name}"), hook: None, rules });
    }
    let dnat = || Expr::Dnat { family: cfg.nfproto(), addr: r.endpoint, proto: r.endpoint_port };
    for b in behaviours {
        let filter_verdict = match b.action {
            ACTION_DROP => Verdict::Drop,
            ACTION_REJECT => Verdict::Goto("reject".into()),
            _ => Verdict::Return,
        };
        elements.push((
            sets::FILTER_BEHAVIOURS,
            Elem { key: u32b(b.id()), data: ElemData::Verdict(filter_verdict), userdata: None },
        ));
        if b.action != ACTION_FORWARD || b.count == 0 {
            continue;
        }
        let name = b.chain();
        let base = || frontend_lookup(cfg, b.class, b.node_port);
        let finish = |mut v: Vec<Expr>| {
            if b.masquerade {
                v.extend(set_mark(mark, false, r.after_route));
            }
            v.push(dnat());
            v
        };
        let pick = || {
            vec![
                Expr::NumgenRandom { dreg: r.after_route, modulus: b.count },
                Expr::Lookup { set: sets::ENDPOINTS.into(), sreg: r.route, dreg: Some(r.endpoint), invert: false },
            ]
        };
        let mut rules = Vec::new();
        if b.timeout > 0 {
            let update = || Expr::DynsetUpdate {
                set: sets::AFFINITY.into(),
                sreg_key: r.route,
                sreg_data: Some(r.endpoint),
                timeout_ms: u64::from(b.timeout) * 1000,
            };
            // A client seen within the timeout keeps its endpoint, if that
            // endpoint still serves the route.
            let mut hit = base();
            hit.extend([
                cfg.saddr(r.after_route),
                Expr::Lookup { set: sets::AFFINITY.into(), sreg: r.route, dreg: Some(r.endpoint), invert: false },
                Expr::Lookup { set: sets::MEMBERS.into(), sreg: r.endpoint, dreg: None, invert: false },
                update(),
            ]);
            rules.push(finish(hit));
            let mut miss = base();
            miss.extend(pick());
            miss.extend([cfg.saddr(r.after_route), update()]);
            rules.push(finish(miss));
        } else {
            let mut v = base();
            v.extend(pick());
            rules.push(finish(v));
        }
        chains.push(Chain { name: name.clone(), hook: None, rules });
        let mut key = u32b(b.id());
        key.extend(u32b(b.timeout));
        elements.push((sets::BEHAVIOURS, Elem { key, data: ElemData::Verdict(Verdict::Goto(name)), userdata: None }));
    }
    let jump_services = vec![Expr::Verdict(Verdict::Jump("services".into()))];
    chains.push(Chain {
        name: "nat-prerouting".into(),
        hook: hook(HookNum::Prerouting, -100, "nat"),
        rules: vec![jump_services.clone()],
    });
    chains.push(Chain {
        name: "nat-output".into(),
        hook: hook(HookNum::Output, -100, "nat"),
        rules: vec![jump_services],
    });
    let mut hairpin = vec![
        Expr::Ct { dreg: reg(1), key: CtKey::Status },
        Expr::Bitwise { sreg: reg(1), dreg: reg(1), mask: u32b(nft::CT_STATUS_DNAT), xor: u32b(0) },
        Expr::Cmp { sreg: reg(1), op: CmpOp::Neq, data: u32b(0) },
        cfg.saddr(reg(1)),
        cfg.daddr(reg(1 + a / 4)),
        Expr::Lookup { set: sets::HAIRPIN.into(), sreg: reg(1), dreg: None, invert: false },
    ];
    hairpin.extend(set_mark(mark, false, reg(0)));
    let unmarked = vec![
        Expr::MetaGet { dreg: reg(0), key: MetaKey::Mark },
        Expr::Bitwise { sreg: reg(0), dreg: reg(0), mask: u32b(mark), xor: u32b(0) },
        Expr::Cmp { sreg: reg(0), op: CmpOp::Eq, data: u32b(0) },
        Expr::Verdict(Verdict::Return),
    ];
    let mut masquerade = set_mark(mark, true, reg(0));
    masquerade.push(Expr::Masq { random_fully: true });
    chains.push(Chain {
        name: "nat-postrouting".into(),
        hook: hook(HookNum::Postrouting, 100, "nat"),
        rules: vec![hairpin, unmarked, masquerade],
    });
    Skeleton { sets, chains, elements }
}

/// Per-Service firewall chain name: `fw-` and a hash of the Service port.
pub fn firewall_chain(p: &ServicePortPlan) -> String {
    let mut h = Sha256::new();
    for part in
        [&*p.name.service.namespace, &*p.name.service.name, &*p.name.port, p.protocol.as_str(), p.family.as_str()]
    {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("fw-{hex}")
}

/// The kinds of frontend as stored in element userdata.
fn kind_char(k: FrontendKind) -> u8 {
    match k {
        FrontendKind::ClusterIP => b'c',
        FrontendKind::ExternalIP => b'e',
        FrontendKind::LoadBalancer => b'l',
        FrontendKind::NodePort => b'n',
    }
}

pub fn kind_of_char(c: u8) -> Option<FrontendKind> {
    Some(match c {
        b'c' => FrontendKind::ClusterIP,
        b'e' => FrontendKind::ExternalIP,
        b'l' => FrontendKind::LoadBalancer,
        b'n' => FrontendKind::NodePort,
        _ => return None,
    })
}

/// What one Service contributes: elements per set, chains, behaviours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortObjects {
    pub elements: Vec<(&'static str, Elem)>,
    pub chains: Vec<Chain>,
    pub behaviours: BTreeSet<Behaviour>,
}

/// Frontend key bytes: class, address (0 for node ports), protocol, port.
pub fn frontend_key_bytes(family: IpFamily, class: u32, f: &Frontend) -> Vec<u8> {
    let mut k = u32b(class);
    match f.ip {
        Some(ip) => k.extend(ip_bytes(ip)),
        None => k.extend(vec![0u8; alen(family) as usize]),
    }
    k.extend(proto_bytes(f.protocol));
    k.extend(port_bytes(f.port));
    k
}

fn class_value(c: proxy_core::SourceClass) -> u32 {
    match c {
        proxy_core::SourceClass::Pod => CLASS_POD,
        proxy_core::SourceClass::Node => CLASS_NODE,
        proxy_core::SourceClass::External => CLASS_EXTERNAL,
    }
}

/// Renders one port plan. `route_ids` gives the route id for each of the
/// decision's routes (allocated by the caller, stable across syncs).
pub fn render_port(
    cfg: &RenderConfig,
    p: &ServicePortPlan,
    d: &decide::PortDecision,
    route_ids: &[u32],
) -> PortObjects {
    let mut out = PortObjects::default();
    let timeout = d.affinity_timeout_seconds.unwrap_or(0);
    let svc = p.name.to_string();
    for (i, eps) in d.routes.iter().enumerate() {
        let route = route_ids[i];
        for (slot, ep) in eps.iter().enumerate() {
            let mut key = u32b(route);
            key.extend(u32b(slot as u32));
            let mut data = ip_bytes(ep.ip());
            data.extend(port_bytes(ep.port));
            data.extend(u32b(route));
            if timeout > 0 {
                out.elements.push((sets::MEMBERS, Elem { key: data.clone(), data: ElemData::None, userdata: None }));
            }
            out.elements.push((sets::ENDPOINTS, Elem { key, data: ElemData::Value(data), userdata: None }));
        }
    }
    for ip in &d.hairpin {
        let mut key = ip_bytes(*ip);
        key.extend(ip_bytes(*ip));
        out.elements.push((sets::HAIRPIN, Elem { key, data: ElemData::None, userdata: None }));
    }
    if let Some(ip) = p.cluster_ip {
        out.elements.push((sets::CLUSTER_IPS, Elem { key: ip_bytes(ip), data: ElemData::None, userdata: None }));
    }
    let fw = firewall_chain(p);
    let mut fw_needed = None;
    for fd in &d.frontends {
        let f = &fd.frontend;
        let node_port = f.kind == FrontendKind::NodePort;
        let mut ud = vec![kind_char(f.kind)];
        ud.extend_from_slice(svc.as_bytes());
        for (i, class) in CLASSES.iter().enumerate() {
            let class = class_value(*class);
            let (action, masq) = &fd.per_class[i];
            let (action, count, route) = match action {
                Action::Forward(r) => (ACTION_FORWARD, d.routes[*r].len() as u32, route_ids[*r]),
                Action::Drop => (ACTION_DROP, 0, 0),
                Action::Reject => (ACTION_REJECT, 0, 0),
            };
            let b = Behaviour { class, node_port, action, masquerade: *masq, count, timeout };
            out.behaviours.insert(b);
            let mut data = u32b(b.id());
            data.extend(u32b(timeout));
            data.extend(u32b(route));
            out.elements.push((
                sets::FRONTENDS,
                Elem {
                    key: frontend_key_bytes(cfg.family, class, f),
                    data: ElemData::Value(data),
                    userdata: Some(ud.clone()),
                },
            ));
        }
        if let (Some(ranges), Some(ip)) = (&fd.source_ranges, f.ip) {
            let mut key = ip_bytes(ip);
            key.extend(proto_bytes(f.protocol));
            key.extend(port_bytes(f.port));
            out.elements.push((
                sets::FIREWALL,
                Elem { key, data: ElemData::Verdict(Verdict::Jump(fw.clone())), userdata: None },
            ));
            fw_needed = Some(ranges.clone());
        }
    }
    if let Some(ranges) = fw_needed {
        let mut rules: Vec<Vec<Expr>> = ranges
            .iter()
            .filter(|r| IpFamily::of(&r.network()) == cfg.family)
            .map(|net| {
                let mut r = in_net(cfg, cfg.saddr(reg(1)), net, reg(1));
                r.push(Expr::Verdict(Verdict::Return));
                r
            })
            .collect();
        rules.push(vec![Expr::Verdict(Verdict::Drop)]);
        out.chains.push(Chain { name: fw, hook: None, rules });
    }
    out
}

/// Parsed frontend element data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendData {
    pub behaviour: Behaviour,
    pub route: u32,
}

pub fn parse_frontend_data(d: &[u8]) -> Option<FrontendData> {
    let w = |i: usize| -> Option<u32> { Some(u32::from_ne_bytes(d.get(i * 4..i * 4 + 4)?.try_into().ok()?)) };
    Some(FrontendData { behaviour: Behaviour::from_id(w(0)?, w(1)?), route: w(2)? })
}
