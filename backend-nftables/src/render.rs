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
//!     chk-<class>: per behaviour b of the class: b.timeout.daddr.proto.dport @frontends (node
//!                  ports: address 0 on local destinations) → return | drop | goto reject;
//!                  daddr @cluster-ips drop
//!  nat prerouting / output (prio -100) ─► services: goto svc-<class> as above
//!     svc-<class>: per forwarding behaviour b of the class, in one rule: b.timeout.daddr.proto.dport
//!                  @frontends, then [affinity: dnat to the endpoint of @affinity (daddr.proto.dport.
//!                  route.saddr), refreshed] or dnat to @endpoints (daddr.proto.dport.route.numgen
//!                  random mod N) [, remembered in @affinity]; [mark]
//!  nat postrouting (prio 100): hairpin (ct status dnat, saddr.daddr @hairpin) → mark;
//!            marked → unmark, masquerade fully-random
//! ```
//!
//! Every lookup's key is built from the packet, the conntrack entry and
//! the rule's own constants, never from another lookup's result, for two
//! reasons:
//! - since Linux 6.11 nf_tables refuses (`ENODATA`) a rule that reads a
//!   register it did not write itself, so every rule is self-contained;
//! - the `nft` CLI (1.0.6, Debian bookworm) cannot print a lookup whose key
//!   is another lookup's result (it asserts in `netlink_parse_concat_expr`,
//!   and it reads every table to build its cache, so `nft list ruleset`
//!   would abort on the node). A map's result only feeds `dnat` and the
//!   affinity map's update, which nft prints.
//!
//! So a frontend's behaviour is part of its `frontends` key (the rule for
//! behaviour b asks "is (b, this destination) a frontend?"), and endpoints
//! are keyed by the frontend they serve instead of by a route id.

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
    pub const AFFINITY: &str = "affinity";
    pub const MEMBERS: &str = "affinity-members";
    pub const HAIRPIN: &str = "hairpin";
    pub const CLUSTER_IPS: &str = "cluster-ips";
    pub const FIREWALL: &str = "firewall";
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
    /// Which of the Service port's routes (`PortDecision::routes`, 0..4)
    /// it forwards to (forward only): part of the endpoints' key.
    pub route: u32,
    /// Endpoints (forward only).
    pub count: u32,
    /// sessionAffinity timeout in seconds, 0 for none.
    pub timeout: u32,
}

impl Behaviour {
    /// The id in frontend keys: class (2 bits), node port, action (2
    /// bits), masquerade, route (2 bits), count (24 bits). The timeout
    /// travels beside it.
    pub fn id(&self) -> u32 {
        self.class
            | u32::from(self.node_port) << 2
            | self.action << 3
            | u32::from(self.masquerade) << 5
            | (self.route & 3) << 6
            | self.count << 8
    }

    pub fn from_id(id: u32, timeout: u32) -> Behaviour {
        Behaviour {
            class: id & 3,
            node_port: id & 4 != 0,
            action: (id >> 3) & 3,
            masquerade: id & 32 != 0,
            route: (id >> 6) & 3,
            count: id >> 8,
            timeout,
        }
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

/// Register layout of the forwarding rules, by family (K = address
/// length in registers). The destination (address or 0, protocol, port)
/// sits in r0..r(K+1), the route in r(K+2) and the slot or client address
/// from r(K+3): the keys of @endpoints and @affinity; the endpoint they
/// give lands in r(2K+3) (address) and r(3K+3) (port).
struct Regs {
    route: u32,
    after_route: u32,
    endpoint: u32,
    endpoint_port: u32,
}

fn regs(family: IpFamily) -> Regs {
    let k = alen(family) / 4;
    Regs { route: reg(k + 2), after_route: reg(k + 3), endpoint: reg(2 * k + 3), endpoint_port: reg(3 * k + 3) }
}

/// `daddr . proto . dport` into r0.. (node ports: address 0).
fn destination(cfg: &RenderConfig, node_port: bool) -> Vec<Expr> {
    let k = cfg.alen() / 4;
    let mut v = vec![cfg.daddr(reg(0))];
    if node_port {
        let zero = vec![0u8; cfg.alen() as usize];
        v.push(Expr::Bitwise { sreg: reg(0), dreg: reg(0), mask: zero.clone(), xor: zero });
    }
    v.push(Expr::MetaGet { dreg: reg(k), key: MetaKey::L4Proto });
    v.push(Expr::Payload { dreg: reg(k + 1), base: PayloadBase::Transport, offset: 2, len: 2 });
    v
}

/// Is the packet's destination a frontend with behaviour `b`?
/// `b.id . b.timeout . daddr . proto . dport @frontends`.
fn frontend_match(cfg: &RenderConfig, b: &Behaviour) -> Vec<Expr> {
    let k = cfg.alen() / 4;
    let mut v = vec![
        Expr::Immediate { dreg: reg(0), data: u32b(b.id()) },
        Expr::Immediate { dreg: reg(1), data: u32b(b.timeout) },
        cfg.daddr(reg(2)),
    ];
    if b.node_port {
        let zero = vec![0u8; cfg.alen() as usize];
        v.push(Expr::Bitwise { sreg: reg(2), dreg: reg(2), mask: zero.clone(), xor: zero });
    }
    v.push(Expr::MetaGet { dreg: reg(k + 2), key: MetaKey::L4Proto });
    v.push(Expr::Payload { dreg: reg(k + 3), base: PayloadBase::Transport, offset: 2, len: 2 });
    v.push(Expr::Lookup { set: sets::FRONTENDS.into(), sreg: reg(0), dreg: None, invert: false });
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

/// Each way a packet can reach a frontend of behaviour `b`: the rule's
/// conditions before the frontend match (none for addresses; one of the
/// node-port address conditions for node ports).
fn variants(cfg: &RenderConfig, b: &Behaviour) -> Vec<Vec<Expr>> {
    if b.node_port { nodeport_conditions(cfg) } else { vec![Vec::new()] }
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
        ..SetSpec::default()
    };
    // Exactly address . port: what `dnat` reads, and what nft prints as
    // `dnat ip to … map @endpoints`.
    let endpoint = SetData::Value(nft::concat(&[addr, PORT]), a + 4);
    let sets = vec![
        spec(sets::FRONTENDS, 0, &[MARK, MARK, addr, PROTO, PORT], 8 + a + 8, None),
        spec(sets::ENDPOINTS, 0, &[addr, PROTO, PORT, MARK, MARK], a + 16, Some(endpoint)),
        spec(
            sets::AFFINITY,
            set_flags::TIMEOUT | set_flags::EVAL,
            &[addr, PROTO, PORT, MARK, addr],
            2 * a + 12,
            Some(endpoint),
        ),
        spec(sets::MEMBERS, 0, &[addr, PROTO, PORT, MARK, MARK, addr, PORT], 2 * a + 20, None),
        spec(sets::HAIRPIN, 0, &[addr, addr], 2 * a, None),
        spec(sets::CLUSTER_IPS, 0, &[addr], a, None),
        spec(sets::FIREWALL, 0, &[addr, PROTO, PORT], a + 8, Some(SetData::Verdict)),
    ];
    let hook = |num, priority, kind| Some(Hook { num, priority, kind });
    let mut chains = Vec::new();
    let elements = Vec::new();

    // Filter side: drop and reject, before DNAT.
    chains.push(Chain { name: "check".into(), hook: None, rules: classify(cfg, "chk") });
    for (class, name) in CLASS_NAMES {
        let mut rules = Vec::new();
        for b in behaviours.iter().filter(|b| b.class == class) {
            let verdict = match b.action {
                ACTION_DROP => Verdict::Drop,
                ACTION_REJECT => Verdict::Goto("reject".into()),
                _ => Verdict::Return,
            };
            for cond in variants(cfg, b) {
                let mut rule = cond;
                rule.extend(frontend_match(cfg, b));
                rule.push(Expr::Verdict(verdict.clone()));
                rules.push(rule);
            }
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

    // NAT side: one rule (two with affinity) per forwarding behaviour and
    // way in; they are disjoint (the behaviour is part of the key).
    chains.push(Chain { name: "services".into(), hook: None, rules: classify(cfg, "svc") });
    let dnat = || Expr::Dnat { family: cfg.nfproto(), addr: r.endpoint, proto: r.endpoint_port };
    for (class, name) in CLASS_NAMES {
        let mut rules = Vec::new();
        for b in behaviours.iter().filter(|b| b.class == class && b.action == ACTION_FORWARD && b.count > 0) {
            for cond in variants(cfg, b) {
                // The frontend match, then its destination and route: the
                // start of the @endpoints and @affinity keys.
                let base = || {
                    let mut v = cond.clone();
                    v.extend(frontend_match(cfg, b));
                    v.extend(destination(cfg, b.node_port));
                    v.push(Expr::Immediate { dreg: r.route, data: u32b(b.route) });
                    v
                };
                let finish = |mut v: Vec<Expr>| {
                    if b.masquerade {
                        v.extend(set_mark(mark, false, reg(0)));
                    }
                    v.push(dnat());
                    v
                };
                let pick = || {
                    vec![
                        Expr::NumgenRandom { dreg: r.after_route, modulus: b.count },
                        Expr::Lookup {
                            set: sets::ENDPOINTS.into(),
                            sreg: reg(0),
                            dreg: Some(r.endpoint),
                            invert: false,
                        },
                    ]
                };
                if b.timeout > 0 {
                    // A client seen within the timeout keeps its endpoint
                    // (entries of removed endpoints are deleted in the
                    // transaction that removes them, see `dataplane`); the
                    // choice is remembered in postrouting (`remember`).
                    let mut hit = base();
                    hit.extend([
                        cfg.saddr(r.after_route),
                        Expr::Lookup {
                            set: sets::AFFINITY.into(),
                            sreg: reg(0),
                            dreg: Some(r.endpoint),
                            invert: false,
                        },
                    ]);
                    rules.push(finish(hit));
                    let mut miss = base();
                    miss.extend(pick());
                    rules.push(finish(miss));
                } else {
                    let mut v = base();
                    v.extend(pick());
                    rules.push(finish(v));
                }
            }
        }
        chains.push(Chain { name: format!("svc-{name}"), hook: None, rules });
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
    let mut postrouting = remember(cfg, behaviours);
    postrouting.extend([hairpin, unmarked, masquerade]);
    chains.push(Chain {
        name: "nat-postrouting".into(),
        hook: hook(HookNum::Postrouting, 100, "nat"),
        rules: postrouting,
    });
    Skeleton { sets, chains, elements }
}

/// Session affinity: the endpoint a new connection was sent to, remembered
/// for its client. Done here, after DNAT, because the packet and its
/// conntrack entry then hold everything the `affinity` element needs (the
/// frontend in the original direction, the endpoint in the packet): nft
/// 1.0.6 cannot print an update whose data is another lookup's result.
/// A connection is remembered under a route only if its endpoint is a
/// member of it (`affinity-members`: frontend . route . timeout .
/// endpoint), which also keeps the right timeout and keeps a connection to
/// another Service on the same port number (an address frontend and a node
/// port) out of the node port's entries. Which class the client is does not
/// matter: a client is always of the same class, and an entry under a route
/// its class does not use is never read.
fn remember(cfg: &RenderConfig, behaviours: &BTreeSet<Behaviour>) -> Vec<Vec<Expr>> {
    let k = cfg.alen() / 4;
    let (src, dst) = match cfg.family {
        IpFamily::V4 => (CtKey::SrcIp, CtKey::DstIp),
        IpFamily::V6 => (CtKey::SrcIp6, CtKey::DstIp6),
    };
    let kinds: BTreeSet<(bool, u32, u32)> = behaviours
        .iter()
        .filter(|b| b.action == ACTION_FORWARD && b.count > 0 && b.timeout > 0)
        .map(|b| (b.node_port, b.route, b.timeout))
        .collect();
    kinds
        .into_iter()
        .map(|(node_port, route, timeout)| {
            let mut v = vec![
                Expr::Ct { dreg: reg(1), key: CtKey::Status },
                Expr::Bitwise { sreg: reg(1), dreg: reg(1), mask: u32b(nft::CT_STATUS_DNAT), xor: u32b(0) },
                Expr::Cmp { sreg: reg(1), op: CmpOp::Neq, data: u32b(0) },
                // frontend . route . timeout . endpoint @affinity-members
                Expr::Ct { dreg: reg(0), key: dst },
            ];
            if node_port {
                let zero = vec![0u8; cfg.alen() as usize];
                v.push(Expr::Bitwise { sreg: reg(0), dreg: reg(0), mask: zero.clone(), xor: zero });
            }
            v.extend([
                Expr::MetaGet { dreg: reg(k), key: MetaKey::L4Proto },
                Expr::Ct { dreg: reg(k + 1), key: CtKey::ProtoDst },
                Expr::Immediate { dreg: reg(k + 2), data: u32b(route) },
                Expr::Immediate { dreg: reg(k + 3), data: u32b(timeout) },
                cfg.daddr(reg(k + 4)),
                Expr::Payload { dreg: reg(2 * k + 4), base: PayloadBase::Transport, offset: 2, len: 2 },
                Expr::Lookup { set: sets::MEMBERS.into(), sreg: reg(0), dreg: None, invert: false },
                // frontend . route . client : endpoint
                Expr::Ct { dreg: reg(k + 3), key: src },
                cfg.daddr(reg(2 * k + 3)),
                Expr::Payload { dreg: reg(3 * k + 3), base: PayloadBase::Transport, offset: 2, len: 2 },
                Expr::DynsetUpdate {
                    set: sets::AFFINITY.into(),
                    sreg_key: reg(0),
                    sreg_data: Some(reg(2 * k + 3)),
                    timeout_ms: u64::from(timeout) * 1000,
                },
            ]);
            v
        })
        .collect()
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

fn class_value(c: proxy_core::SourceClass) -> u32 {
    match c {
        proxy_core::SourceClass::Pod => CLASS_POD,
        proxy_core::SourceClass::Node => CLASS_NODE,
        proxy_core::SourceClass::External => CLASS_EXTERNAL,
    }
}

/// Frontend key bytes without the behaviour: address (0 for node ports),
/// protocol, port. The start of `frontends` (after the behaviour),
/// `endpoints` and `affinity` keys.
pub fn destination_bytes(family: IpFamily, f: &Frontend) -> Vec<u8> {
    let mut k = match f.ip {
        Some(ip) => ip_bytes(ip),
        None => vec![0u8; alen(family) as usize],
    };
    k.extend(proto_bytes(f.protocol));
    k.extend(port_bytes(f.port));
    k
}

/// The `frontends` key of a frontend with behaviour `b`.
pub fn frontend_key_bytes(family: IpFamily, b: &Behaviour, f: &Frontend) -> Vec<u8> {
    let mut k = u32b(b.id());
    k.extend(u32b(b.timeout));
    k.extend(destination_bytes(family, f));
    k
}

/// Renders one port plan.
pub fn render_port(cfg: &RenderConfig, p: &ServicePortPlan, d: &decide::PortDecision) -> PortObjects {
    let mut out = PortObjects::default();
    let timeout = d.affinity_timeout_seconds.unwrap_or(0);
    let svc = p.name.to_string();
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
        let dest = destination_bytes(cfg.family, f);
        let mut routes_used = BTreeSet::new();
        for (i, class) in CLASSES.iter().enumerate() {
            let class = class_value(*class);
            let (action, masq) = &fd.per_class[i];
            let (action, count, route) = match action {
                Action::Forward(r) => {
                    routes_used.insert(*r);
                    (ACTION_FORWARD, d.routes[*r].len() as u32, *r as u32)
                }
                Action::Drop => (ACTION_DROP, 0, 0),
                Action::Reject => (ACTION_REJECT, 0, 0),
            };
            let b = Behaviour { class, node_port, action, masquerade: *masq, route, count, timeout };
            out.behaviours.insert(b);
            out.elements.push((
                sets::FRONTENDS,
                Elem { key: frontend_key_bytes(cfg.family, &b, f), data: ElemData::None, userdata: Some(ud.clone()) },
            ));
        }
        // This frontend's endpoints, per route its classes use.
        for r in routes_used {
            for (slot, ep) in d.routes[r].iter().enumerate() {
                let mut key = dest.clone();
                key.extend(u32b(r as u32));
                key.extend(u32b(slot as u32));
                let mut data = ip_bytes(ep.ip());
                data.extend(port_bytes(ep.port));
                if timeout > 0 {
                    let mut member = dest.clone();
                    member.extend(u32b(r as u32));
                    member.extend(u32b(timeout));
                    member.extend(data.clone());
                    out.elements.push((sets::MEMBERS, Elem { key: member, data: ElemData::None, userdata: None }));
                }
                out.elements.push((sets::ENDPOINTS, Elem { key, data: ElemData::Value(data), userdata: None }));
            }
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

/// A `frontends` key read back: the behaviour and the destination bytes.
pub fn parse_frontend_key(k: &[u8]) -> Option<(Behaviour, &[u8])> {
    let w = |i: usize| -> Option<u32> { Some(u32::from_ne_bytes(k.get(i * 4..i * 4 + 4)?.try_into().ok()?)) };
    Some((Behaviour::from_id(w(0)?, w(1)?), k.get(8..)?))
}
