//! Rendering plans into chains.
//!
//! ```text
//!  nat PREROUTING ─┐
//!  nat OUTPUT ─────┴─► SWITCHYARD-SERVICES (destination tree root)
//!                        ├─ -d 10.96.0.0/14 ─► SWITCHYARD-DST-… ─► … ─► leaf: per frontend
//!                        │     ClusterIP:  [masquerade mark] + DNAT rules inline (statistic, recent)
//!                        │                 or a jump to the Service's SVC chain when it has one
//!                        │     externalIP / LB IP: -j SWITCHYARD-EXT-… (or -FW- with source ranges)
//!                        └─ local destination ─► SWITCHYARD-NODEPORTS (protocol/port tree) ─► EXT
//!  SWITCHYARD-EXT-…  masquerade per policy; pods/node → SVC (cluster-wide), others → SVC or SVL (local)
//!  SWITCHYARD-SVC-…/-SVL-…  one DNAT per endpoint (statistic spreading, recent for ClientIP affinity)
//!  nat POSTROUTING ─► SWITCHYARD-POSTROUTING: hairpin tree (src = dst = local endpoint → mark),
//!                     then MASQUERADE (--random-fully) what carries the mark
//!
//!  filter INPUT/FORWARD/OUTPUT ─► SWITCHYARD-INPUT/-FORWARD/-OUTPUT
//!     NEW ─► SWITCHYARD-FIREWALL (destination tree): frontends nat did not DNAT get
//!            REJECT (no endpoints) or DROP (no local endpoints, source ranges)
//!     INPUT: SWITCHYARD-HEALTHCHECKS (ACCEPT health-check node ports)
//!     FORWARD: DROP ctstate INVALID, ACCEPT marked and established traffic
//! ```
//!
//! The filter side relies on nat having run first: a packet nat sent to an
//! endpoint no longer has the frontend as destination, so filter rules keyed
//! on frontends only ever see traffic that was not forwarded.
//!
//! Backends never re-decide Service semantics: every choice here is a cell
//! of the port's [`FlowTable`] (route by name, masquerade per class of
//! source, source ranges, the hairpin set), rendered as it is.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use proxy_core::{
    ClassFlow, Endpoint, FlowTable, FrontendFlows, FrontendKind, IpFamily, MasqueradeConfig, NodePortAddresses,
    Protocol, Route, RouteId, ServiceName, ServicePlan, ServicePortPlan,
};

use crate::names::{self, hashed};
use crate::restore::{Rule, Table, escape_comment, escape_comment_word, net, socket, unescape_comment};
use crate::tree::{self, KeyKind, TreeSpec};
use crate::trees::Trees;

/// Everything rendering depends on besides the plans, for one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderConfig {
    pub family: IpFamily,
    /// `1 << masqueradeBit`.
    pub masquerade_mark: u32,
    pub masquerade: MasqueradeConfig,
    /// MASQUERADE with `--random-fully` (iptables ≥ 1.6.2, kernel ≥ 3.14).
    pub random_fully: bool,
    /// kube-proxy's `localhostNodePorts` (IPv4 only; needs `route_localnet`).
    pub localhost_nodeports: bool,
    pub nodeport_addresses: NodePortAddresses,
    /// The node's primary addresses (for `--nodeport-addresses primary`).
    pub node_ips: Vec<IpAddr>,
    /// Dispatch-tree shape.
    pub stride: u8,
    pub leaf_max: usize,
}

impl RenderConfig {
    /// Defaults as kube-proxy: mark bit 14, localhost node ports on, every address.
    pub fn new(family: IpFamily) -> Self {
        RenderConfig {
            family,
            masquerade_mark: 1 << 14,
            masquerade: MasqueradeConfig::default(),
            random_fully: true,
            localhost_nodeports: true,
            nodeport_addresses: NodePortAddresses::All,
            node_ips: Vec::new(),
            stride: 2,
            leaf_max: 256,
        }
    }

    fn cluster_cidrs(&self) -> impl Iterator<Item = &IpNet> {
        let v4 = self.family == IpFamily::V4;
        self.masquerade.cluster_cidrs.iter().filter(move |c| matches!(c, IpNet::V4(_)) == v4)
    }

    fn mark(&self) -> String {
        format!("{:#x}/{:#x}", self.masquerade_mark, self.masquerade_mark)
    }

    /// `-j MARK` that sets the masquerade bit (`--or-mark`, as iptables-save prints it).
    fn mark_masq(&self, rule: Rule) -> Rule {
        rule.jump_with("MARK", &format!("--set-xmark {}", self.mark()))
    }

    /// REJECT: a TCP reset for TCP (the rule must match `-p tcp`), ICMP
    /// port-unreachable otherwise. The reset matters for the node's own
    /// clients: an ICMP error that arrives while connect(2) still holds the
    /// socket lock is only recorded as a soft error, and the connection
    /// fails a SYN retransmission (1 s) later; a reset is processed when the
    /// lock is released, so "connection refused" is immediate.
    fn reject(&self, rule: Rule, protocol: Protocol) -> Rule {
        match (protocol, self.family) {
            (Protocol::Tcp, _) => rule.jump_with("REJECT", "--reject-with tcp-reset"),
            (_, IpFamily::V4) => rule.jump_with("REJECT", "--reject-with icmp-port-unreachable"),
            (_, IpFamily::V6) => rule.jump_with("REJECT", "--reject-with icmp6-port-unreachable"),
        }
    }

    fn loopback(&self) -> IpNet {
        match self.family {
            IpFamily::V4 => IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::LOCALHOST, 8).unwrap_or_default()),
            IpFamily::V6 => IpNet::from(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
        }
    }

    /// Node ports are refused on loopback: always for IPv6, and for IPv4
    /// unless `localhostNodePorts` (as kube-proxy).
    fn loopback_nodeports_blocked(&self) -> bool {
        self.family == IpFamily::V6 || !self.localhost_nodeports
    }

    /// Whether loopback node ports are served, which needs `route_localnet`
    /// and the martian-source guard (kube-proxy's KUBE-FIREWALL rule).
    pub fn localhost_nodeports_active(&self) -> bool {
        if self.loopback_nodeports_blocked() {
            return false;
        }
        let lo = self.loopback();
        match &self.nodeport_addresses {
            NodePortAddresses::All => true,
            NodePortAddresses::Primary => self.node_ips.iter().any(|ip| lo.contains(ip)),
            NodePortAddresses::Cidrs(c) => c.iter().any(|c| c.contains(&lo.network())),
        }
    }

    pub(crate) fn tree_spec(&self, tree: TreeId) -> TreeSpec {
        let tag = self.family.as_str();
        let (key, root, kind) = match tree {
            TreeId::NatServices => (KeyKind::Destination(self.family), names::SERVICES, "DST"),
            TreeId::NatNodePorts => (KeyKind::ProtoPort, names::NODEPORTS, "NP"),
            TreeId::Hairpin => (KeyKind::Source(self.family), names::HAIRPIN, "HP"),
            TreeId::FilterServices => (KeyKind::Destination(self.family), names::FIREWALL, "FDST"),
            TreeId::FilterNodePorts => (KeyKind::ProtoPort, names::FW_NODEPORTS, "FNP"),
            TreeId::HealthChecks => (KeyKind::ProtoPort, names::HEALTHCHECKS, "HC"),
        };
        TreeSpec { key, stride: self.stride, leaf_max: self.leaf_max, root, kind, tag }
    }

    /// The rules after a tree root's own: where local destinations go on to
    /// the node-port trees.
    pub(crate) fn tree_tail(&self, tree: TreeId) -> Vec<String> {
        match tree {
            TreeId::NatServices => nodeport_hook(self, names::NODEPORTS),
            TreeId::FilterServices => nodeport_hook(self, names::FW_NODEPORTS),
            _ => Vec::new(),
        }
    }
}

/// The dispatch trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TreeId {
    /// nat: frontends with an address (ClusterIP, externalIPs, LB IPs).
    NatServices,
    /// nat: node ports by (protocol, port).
    NatNodePorts,
    /// nat POSTROUTING: local endpoints by source address.
    Hairpin,
    /// filter: REJECT/DROP for address frontends.
    FilterServices,
    /// filter: REJECT/DROP for node ports.
    FilterNodePorts,
    /// filter INPUT: ACCEPT health-check node ports.
    HealthChecks,
}

impl TreeId {
    pub const ALL: [TreeId; 6] = [
        TreeId::NatServices,
        TreeId::NatNodePorts,
        TreeId::Hairpin,
        TreeId::FilterServices,
        TreeId::FilterNodePorts,
        TreeId::HealthChecks,
    ];

    pub fn table(self) -> Table {
        match self {
            TreeId::NatServices | TreeId::NatNodePorts | TreeId::Hairpin => Table::Nat,
            _ => Table::Filter,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The kinds of frontend as rule comments name them (`<service port> <kind>`).
pub fn kind_label(kind: FrontendKind) -> &'static str {
    match kind {
        FrontendKind::ClusterIP => "cluster IP",
        FrontendKind::ExternalIP => "external IP",
        FrontendKind::LoadBalancer => "loadbalancer IP",
        FrontendKind::NodePort => "nodePort",
    }
}

/// The reverse of [`kind_label`].
pub fn parse_kind_label(s: &str) -> Option<FrontendKind> {
    [FrontendKind::ClusterIP, FrontendKind::ExternalIP, FrontendKind::LoadBalancer, FrontendKind::NodePort]
        .into_iter()
        .find(|k| kind_label(*k) == s)
}

/// The comment of a frontend's first rule, escaped: `<service port> <kind>`
/// with the Service port as one word.
pub fn frontend_comment(service_port: &str, kind: FrontendKind) -> String {
    format!("{} {}", escape_comment_word(service_port), kind_label(kind))
}

/// Reads a frontend comment (as written in the rule) back: (Service port, kind).
pub fn parse_frontend_comment(raw: &str) -> Option<(String, FrontendKind)> {
    let (svc, kind) = raw.split_once(' ')?;
    Some((unescape_comment(svc), parse_kind_label(kind)?))
}

/// A chain that belongs to one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnChain {
    pub table: Table,
    pub name: String,
    pub rules: Vec<String>,
    pub hash: u64,
}

/// Rules a Service contributes to a dispatch tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: u128,
    pub rules: Vec<String>,
    pub hash: u64,
}

fn hash_rules(rules: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    rules.hash(&mut h);
    h.finish()
}

impl Entry {
    fn new(key: u128, rules: Vec<String>) -> Self {
        Entry { key, hash: hash_rules(&rules), rules }
    }
}

/// What one Service renders to in one family; cached between syncs.
#[derive(Clone, Debug)]
pub struct ServiceRules {
    pub plan: Arc<ServicePlan>,
    pub chains: Vec<OwnChain>,
    /// Entries per [`TreeId`].
    pub entries: [Vec<Entry>; 6],
}

impl ServiceRules {
    /// The Service's own chains as desired chains.
    pub fn desired_chains(&self) -> impl Iterator<Item = DesiredChain<'_>> {
        self.chains.iter().map(|c| DesiredChain {
            table: c.table,
            name: Cow::Borrowed(&c.name),
            hash: c.hash,
            body: ChainBody::Service(&c.rules),
        })
    }

    /// (rules, chains) per table (nat, filter) of the Service's own chains.
    pub fn own_counts(&self) -> [(usize, usize); 2] {
        let mut out = [(0, 0); 2];
        for c in &self.chains {
            let slot = &mut out[usize::from(c.table != Table::Nat)];
            slot.0 += c.rules.len();
            slot.1 += 1;
        }
        out
    }

    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum::<usize>()
            + self.entries.iter().flatten().map(|e| e.rules.len()).sum::<usize>()
    }
}

fn is_forward(r: &Route) -> bool {
    matches!(r, Route::Forward(_))
}

/// The probability iptables stores for `p` (out of 2^31), printed as iptables-save does.
pub fn probability_text(p: f64) -> String {
    let q = (p * 2_147_483_648.0).round();
    format!("{:.11}", q / 2_147_483_648.0)
}

struct PortCtx<'a> {
    cfg: &'a RenderConfig,
    p: &'a ServicePortPlan,
    id: [&'a str; 5],
    proto: &'static str,
    svc: String,
}

impl PortCtx<'_> {
    fn name(&self, kind: &str) -> String {
        hashed(kind, &self.id)
    }

    fn affinity_name(&self, ep: &Endpoint) -> String {
        let addr = ep.addr().to_string();
        let [a, b, c, d, e] = self.id;
        hashed("AFF", &[a, b, c, d, e, &addr])
    }

    fn recent_mask(&self) -> &'static str {
        match self.cfg.family {
            IpFamily::V4 => "255.255.255.255",
            IpFamily::V6 => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        }
    }

    /// DNAT rules spreading over `eps`: ClientIP affinity checks first, then
    /// one statistic rule per endpoint (1/n, 1/(n-1), ..., the last unconditional).
    fn selection(&self, eps: &[Endpoint], base: &dyn Fn() -> Rule) -> Vec<String> {
        let mut out = Vec::with_capacity(eps.len() * 2);
        let mask = self.recent_mask();
        if let Some(seconds) = self.p.affinity_timeout_seconds {
            for ep in eps {
                let args = format!(
                    "--update --seconds {seconds} --reap --name {} --mask {mask} --rsource",
                    self.affinity_name(ep)
                );
                let r = base().matcher("recent", &args);
                out.push(r.jump_with("DNAT", &format!("--to-destination {}", socket(ep.ip(), ep.port))).render());
            }
        }
        let n = eps.len();
        for (i, ep) in eps.iter().enumerate() {
            let mut r = base();
            if i + 1 < n {
                let p = probability_text(1.0 / (n - i) as f64);
                r = r.matcher("statistic", &format!("--mode random --probability {p}"));
            }
            if self.p.affinity_timeout_seconds.is_some() {
                r = r.matcher("recent", &format!("--set --name {} --mask {mask} --rsource", self.affinity_name(ep)));
            }
            out.push(r.jump_with("DNAT", &format!("--to-destination {}", socket(ep.ip(), ep.port))).render());
        }
        out
    }

    /// `-d IP -p P [-m comment] -m P --dport PORT`
    fn frontend_rule(&self, ip: IpAddr, port: u16, comment: Option<&str>) -> Rule {
        let mut r = Rule::new().destination(net(ip)).protocol(self.proto);
        if let Some(c) = comment {
            r = r.comment_escaped(c);
        }
        r.dport(self.proto, port)
    }

    fn nodeport_rule(&self, port: u16, comment: Option<&str>) -> Rule {
        let mut r = Rule::new().protocol(self.proto);
        if let Some(c) = comment {
            r = r.comment_escaped(c);
        }
        r.dport(self.proto, port)
    }

    /// The filter verdict for traffic to `f` that nat did not forward: the
    /// routes its cells name, REJECT if one of them rejects, else DROP.
    fn verdict(&self, table: &FlowTable, f: &FrontendFlows) -> Option<Verdict> {
        let routes: Vec<&Route> = f.classes().iter().map(|(_, c)| table.route(c.route)).collect();
        if routes.iter().all(|r| is_forward(r)) {
            None
        } else if routes.iter().any(|r| matches!(r, Route::Reject)) {
            Some(Verdict::Reject)
        } else {
            Some(Verdict::Drop)
        }
    }

    /// The chain of a forwarding route ([`RouteId::Cluster`]: SVC, [`RouteId::Local`]: SVL).
    fn route_chain(&self, id: RouteId) -> String {
        match id {
            RouteId::Cluster => self.name("SVC"),
            RouteId::Local => self.name("SVL"),
        }
    }

    fn verdict_rule(&self, rule: Rule, v: Verdict) -> String {
        match v {
            Verdict::Reject => self.cfg.reject(rule, self.p.protocol).render(),
            Verdict::Drop => rule.jump("DROP").render(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Reject,
    Drop,
}

/// Renders one Service for one family.
pub fn render_service(plan: &Arc<ServicePlan>, cfg: &RenderConfig) -> ServiceRules {
    let mut out = ServiceRules { plan: plan.clone(), chains: Vec::new(), entries: Default::default() };
    let mut health_checks = BTreeSet::new();
    for p in plan.ports.iter().filter(|p| p.family == cfg.family) {
        render_port(p, cfg, &mut out);
        if let Some(hc) = p.health_check_node_port {
            health_checks.insert(hc);
        }
    }
    for hc in health_checks {
        let comment = format!("{} health check node port", plan.name());
        let rule = Rule::new().protocol("tcp").comment(&comment).dport("tcp", hc).jump("ACCEPT");
        out.entries[TreeId::HealthChecks.index()]
            .push(Entry::new(tree::port_key(Protocol::Tcp, hc), vec![rule.render()]));
    }
    out
}

fn render_port(p: &ServicePortPlan, cfg: &RenderConfig, out: &mut ServiceRules) {
    // The core's decisions for this port, rendered verbatim: which route and
    // whether to masquerade per frontend and class of source, the hairpin set.
    let table = p.flow_table(&cfg.masquerade);
    let svc = p.name.to_string();
    let ns = &*p.name.service.namespace;
    let name = &*p.name.service.name;
    let ctx = PortCtx {
        cfg,
        p,
        id: [ns, name, &p.name.port, p.protocol.as_str(), cfg.family.as_str()],
        proto: p.protocol.as_lower_str(),
        svc,
    };
    let proto = ctx.proto;

    // Route chains (SVC for the cluster route, SVL for the local one): one per
    // forwarding route an external frontend names. A ClusterIP jumps into
    // the chain of its route when there is one, else carries its DNAT rules.
    let mut route_chains: BTreeMap<RouteId, String> = BTreeMap::new();
    for f in table.frontends.iter().filter(|f| f.frontend.kind.is_external() || f.single_route().is_none()) {
        for (_, cell) in f.classes() {
            if is_forward(table.route(cell.route)) {
                route_chains.entry(cell.route).or_insert_with(|| ctx.route_chain(cell.route));
            }
        }
    }
    for (id, chain) in &route_chains {
        let mut rules = ctx.selection(table.route(*id).endpoints(), &|| Rule::new().protocol(proto));
        if let Some(first) = rules.first_mut() {
            // Name the Service on the chain's first rule, for people reading iptables-save.
            *first = with_comment(first, &escape_comment(&ctx.svc));
        }
        out.chains.push(OwnChain { table: Table::Nat, name: chain.clone(), hash: hash_rules(&rules), rules });
    }
    let chain_of = |id: RouteId| route_chains.get(&id).cloned();

    // Hairpin: an endpoint of the core's hairpin set reaching itself.
    let hairpin: BTreeSet<IpAddr> = table.hairpin.iter().map(|a| a.ip()).collect();
    for ip in hairpin {
        let rule = cfg.mark_masq(Rule::new().source(net(ip)).destination(net(ip))).render();
        out.entries[TreeId::Hairpin.index()].push(Entry::new(tree::ip_key(ip), vec![rule]));
    }

    // External frontends with the same cells share one EXT chain (and one FW
    // chain in front of it for source ranges). Every external kind follows
    // externalTrafficPolicy, so there is one group in practice.
    let mut groups: Vec<[(RouteId, bool); 3]> = Vec::new();
    let mut group_of = |f: &FrontendFlows| -> usize {
        let key = cells_key(f);
        groups.iter().position(|g| *g == key).unwrap_or_else(|| {
            groups.push(key);
            groups.len() - 1
        })
    };
    let numbered = |kind: &str, i: usize| if i == 0 { ctx.name(kind) } else { ctx.name(&format!("{kind}{i}")) };
    let mut ext_made = BTreeSet::new();
    let mut fw_made = BTreeSet::new();
    let mut fwr_needed = false;

    for f in &table.frontends {
        let kind = f.frontend.kind;
        let comment = frontend_comment(&ctx.svc, kind);
        let forwards = f.classes().iter().any(|(_, c)| is_forward(table.route(c.route)));
        let verdict = ctx.verdict(&table, f);
        if kind == FrontendKind::ClusterIP {
            let Some(cip) = f.frontend.ip else { continue };
            let key = tree::ip_key(cip);
            if forwards {
                let base = || ctx.frontend_rule(cip, p.port, None);
                let mut rules = Vec::new();
                match f.single_route() {
                    Some(id) => {
                        rules.extend(masquerade_rules(&ctx, f, &base, out));
                        match chain_of(id) {
                            Some(chain) => rules.push(base().jump(&chain).render()),
                            None => rules.extend(ctx.selection(table.route(id).endpoints(), &base)),
                        }
                    }
                    None => {
                        // Classes of source reaching different routes (no
                        // traffic policy does this to a ClusterIP today).
                        let chain = ctx.name("CIP");
                        let body = class_rules(&ctx, f, &chain_of);
                        out.chains.push(OwnChain {
                            table: Table::Nat,
                            name: chain.clone(),
                            hash: hash_rules(&body),
                            rules: body,
                        });
                        rules.push(base().jump(&chain).render());
                    }
                }
                rules[0] = with_comment(&rules[0], &comment);
                out.entries[TreeId::NatServices.index()].push(Entry::new(key, rules));
            }
            if let Some(v) = verdict {
                let rule = ctx.verdict_rule(ctx.frontend_rule(cip, p.port, Some(&comment)), v);
                out.entries[TreeId::FilterServices.index()].push(Entry::new(key, vec![rule]));
            }
            continue;
        }

        let group = group_of(f);
        let ext_chain = numbered("EXT", group);
        if forwards && ext_made.insert(group) {
            let mut rules = class_rules(&ctx, f, &chain_of);
            rules[0] = with_comment(&rules[0], &escape_comment(&format!("{} external destinations", ctx.svc)));
            out.chains.push(OwnChain { table: Table::Nat, name: ext_chain.clone(), hash: hash_rules(&rules), rules });
        }
        let ranged = f.classes().iter().any(|(_, c)| c.source_ranges) && !table.source_ranges.is_empty();
        let fw_chain = numbered("FW", group);
        if ranged && forwards && fw_made.insert(group) {
            let mut rules = Vec::new();
            for range in &table.source_ranges {
                rules.push(Rule::new().source(range).jump(&ext_chain).render());
            }
            // Classes the ranges do not filter (the node itself).
            if !f.pod.source_ranges {
                for cidr in cfg.cluster_cidrs() {
                    rules.push(Rule::new().source(cidr).jump(&ext_chain).render());
                }
            }
            if !f.node.source_ranges {
                rules.push(Rule::new().matcher("addrtype", "--src-type LOCAL").jump(&ext_chain).render());
            }
            rules[0] = with_comment(&rules[0], &escape_comment(&format!("{} loadbalancer source ranges", ctx.svc)));
            out.chains.push(OwnChain { table: Table::Nat, name: fw_chain.clone(), hash: hash_rules(&rules), rules });
        }

        if kind == FrontendKind::NodePort {
            let np = f.frontend.port;
            let key = tree::port_key(p.protocol, np);
            if forwards {
                let rule = ctx.nodeport_rule(np, Some(&comment)).jump(&ext_chain).render();
                out.entries[TreeId::NatNodePorts.index()].push(Entry::new(key, vec![rule]));
            }
            if let Some(v) = verdict {
                let rule = ctx.verdict_rule(ctx.nodeport_rule(np, Some(&comment)), v);
                out.entries[TreeId::FilterNodePorts.index()].push(Entry::new(key, vec![rule]));
            }
            continue;
        }

        let Some(ip) = f.frontend.ip else { continue };
        let key = tree::ip_key(ip);
        if forwards {
            let target = if ranged { &fw_chain } else { &ext_chain };
            let rule = ctx.frontend_rule(ip, p.port, Some(&comment)).jump(target).render();
            out.entries[TreeId::NatServices.index()].push(Entry::new(key, vec![rule]));
        }
        let filter_rule = if ranged {
            // Whatever nat did not DNAT is dropped, except allowed sources of
            // a Service without endpoints, which get the usual REJECT.
            if verdict == Some(Verdict::Reject) {
                fwr_needed = true;
                Some(ctx.frontend_rule(ip, p.port, Some(&comment)).jump(&ctx.name("FWR")).render())
            } else {
                Some(ctx.frontend_rule(ip, p.port, Some(&comment)).jump("DROP").render())
            }
        } else {
            verdict.map(|v| ctx.verdict_rule(ctx.frontend_rule(ip, p.port, Some(&comment)), v))
        };
        if let Some(rule) = filter_rule {
            out.entries[TreeId::FilterServices.index()].push(Entry::new(key, vec![rule]));
        }
    }
    if fwr_needed {
        let mut rules = Vec::new();
        for range in &table.source_ranges {
            rules.push(cfg.reject(Rule::new().source(range).protocol(proto), p.protocol).render());
        }
        rules
            .push(cfg.reject(Rule::new().protocol(proto).matcher("addrtype", "--src-type LOCAL"), p.protocol).render());
        rules.push(Rule::new().jump("DROP").render());
        rules[0] = with_comment(&rules[0], &escape_comment(&format!("{} loadbalancer source ranges", ctx.svc)));
        out.chains.push(OwnChain { table: Table::Filter, name: ctx.name("FWR"), hash: hash_rules(&rules), rules });
    }
}

/// A frontend's cells without the source-range flag: what its EXT chain does.
fn cells_key(f: &FrontendFlows) -> [(RouteId, bool); 3] {
    [(f.pod.route, f.pod.masquerade), (f.node.route, f.node.masquerade), (f.external.route, f.external.masquerade)]
}

/// How iptables tells the classes of source apart: a local source address
/// is the node, a source in a cluster CIDR of this family a pod, anything
/// else external (as `Snapshot::classify_source`). Pods are matched first:
/// node addresses are never in the pod CIDRs.
fn local_source() -> Rule {
    Rule::new().matcher("addrtype", "--src-type LOCAL")
}

/// Rules that send each class of source of `f` to the chain of its route
/// (RETURN when it does not forward: the filter verdict handles it),
/// masquerading the classes whose cell says so.
fn class_rules(ctx: &PortCtx<'_>, f: &FrontendFlows, chain_of: &dyn Fn(RouteId) -> Option<String>) -> Vec<String> {
    let cfg = ctx.cfg;
    let mut rules = Vec::new();
    let set = f.masquerade_set();
    if let Some(id) = f.single_route()
        && (set.all() || set.none())
    {
        if set.all() {
            rules.push(cfg.mark_masq(Rule::new()).render());
        }
        if let Some(c) = chain_of(id) {
            rules.push(Rule::new().jump(&c).render());
        }
        if rules.is_empty() {
            rules.push(Rule::new().jump("RETURN").render());
        }
        return rules;
    }
    let target = |c: &ClassFlow| chain_of(c.route).unwrap_or_else(|| "RETURN".to_string());
    for cidr in cfg.cluster_cidrs() {
        if f.pod.masquerade {
            rules.push(cfg.mark_masq(Rule::new().source(cidr)).render());
        }
        rules.push(Rule::new().source(cidr).jump(&target(&f.pod)).render());
    }
    if f.node.masquerade {
        rules.push(cfg.mark_masq(local_source()).render());
    }
    rules.push(local_source().jump(&target(&f.node)).render());
    if f.external.masquerade {
        rules.push(cfg.mark_masq(Rule::new()).render());
    }
    if let Some(c) = chain_of(f.external.route) {
        rules.push(Rule::new().jump(&c).render());
    }
    rules
}

/// The masquerade rules of a ClusterIP entry whose classes share one route:
/// everything (`--masquerade-all`), nothing, or every class but pods
/// (local-traffic detection) in kube-proxy's shape; any other set through a
/// chain of this port that marks class by class.
fn masquerade_rules(
    ctx: &PortCtx<'_>,
    f: &FrontendFlows,
    base: &dyn Fn() -> Rule,
    out: &mut ServiceRules,
) -> Vec<String> {
    let cfg = ctx.cfg;
    let set = f.masquerade_set();
    if set.all() {
        return vec![cfg.mark_masq(base()).render()];
    }
    if set.none() {
        return Vec::new();
    }
    let cidrs: Vec<&IpNet> = cfg.cluster_cidrs().collect();
    if !set.pod && set.node && set.external {
        return match cidrs.as_slice() {
            // No pod CIDR of this family: no source is a pod.
            [] => vec![cfg.mark_masq(base()).render()],
            [one] => vec![cfg.mark_masq(base().not_source(one)).render()],
            _ => vec![base().jump(names::NONPOD_MASQ).render()],
        };
    }
    let chain = ctx.name("MSQ");
    let mut rules = Vec::new();
    for cidr in &cidrs {
        if set.pod {
            rules.push(cfg.mark_masq(Rule::new().source(cidr)).render());
        }
        rules.push(Rule::new().source(cidr).jump("RETURN").render());
    }
    if set.node {
        rules.push(cfg.mark_masq(local_source()).render());
    }
    rules.push(local_source().jump("RETURN").render());
    if set.external {
        rules.push(cfg.mark_masq(Rule::new()).render());
    }
    out.chains.push(OwnChain { table: Table::Nat, name: chain.clone(), hash: hash_rules(&rules), rules });
    vec![base().jump(&chain).render()]
}

/// Inserts an (escaped) comment into rendered rule text, at the place
/// iptables-save prints it (after the generic options, before the first `-m`/`-j`).
fn with_comment(rule: &str, comment: &str) -> String {
    let c = Rule::new().comment_escaped(comment).render();
    let at = [" -m ", " -j ", " -g "]
        .iter()
        .filter_map(|m| rule.find(m))
        .min()
        .or_else(|| ["-m ", "-j ", "-g "].iter().any(|m| rule.starts_with(m)).then_some(0));
    match at {
        Some(0) if !rule.starts_with(' ') => format!("{c} {rule}"),
        Some(i) => format!("{} {c}{}", &rule[..i], &rule[i..]),
        None => format!("{rule} {c}"),
    }
}

/// A chain of the desired state.
#[derive(Clone, Debug)]
pub struct DesiredChain<'a> {
    pub table: Table,
    pub name: Cow<'a, str>,
    pub hash: u64,
    pub body: ChainBody<'a>,
}

/// The rules of a desired chain, borrowed where they are cached.
#[derive(Clone, Debug)]
pub enum ChainBody<'a> {
    Owned(Vec<String>),
    Service(&'a [String]),
    /// A tree chain: a leaf's entries (or an inner chain's dispatch rules),
    /// then the root's tail.
    Tree(Vec<&'a [String]>),
}

impl DesiredChain<'_> {
    pub fn rules(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.body {
            ChainBody::Owned(r) => Box::new(r.iter().map(String::as_str)),
            ChainBody::Service(r) => Box::new(r.iter().map(String::as_str)),
            ChainBody::Tree(groups) => Box::new(groups.iter().flat_map(|g| g.iter().map(String::as_str))),
        }
    }

    pub fn rule_count(&self) -> usize {
        match &self.body {
            ChainBody::Owned(r) => r.len(),
            ChainBody::Service(r) => r.len(),
            ChainBody::Tree(groups) => groups.iter().map(|g| g.len()).sum(),
        }
    }
}

/// A jump from a built-in chain into ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub table: Table,
    pub chain: &'static str,
    pub rule: String,
}

/// The jumps from built-in chains (inserted at the top).
pub fn hooks() -> Vec<Hook> {
    let hook = |table, chain, comment: &str, target| Hook {
        table,
        chain,
        rule: Rule::new().comment(comment).jump(target).render(),
    };
    vec![
        hook(Table::Nat, "PREROUTING", "switchyard service portals", names::SERVICES),
        hook(Table::Nat, "OUTPUT", "switchyard service portals", names::SERVICES),
        hook(Table::Nat, "POSTROUTING", "switchyard postrouting rules", names::POSTROUTING),
        hook(Table::Filter, "INPUT", "switchyard input rules", names::INPUT),
        hook(Table::Filter, "FORWARD", "switchyard forwarding rules", names::FORWARD),
        hook(Table::Filter, "OUTPUT", "switchyard output rules", names::OUTPUT),
    ]
}

/// The canary chain's only rule; `-D` of it fails if the table was flushed.
///
/// Bare (no match, no target: nf_tables stores only a counter) on purpose:
/// a rule with a verdict or an xt extension makes the kernel re-validate
/// every rule reachable in the table when it is added (about 100 ms at
/// 10,000 Services), and periodic syncs re-add the canary.
pub fn canary_rule() -> String {
    Rule::new().render()
}

fn owned(table: Table, name: &'static str, rules: Vec<String>) -> DesiredChain<'static> {
    DesiredChain { table, name: Cow::Borrowed(name), hash: hash_rules(&rules), body: ChainBody::Owned(rules) }
}

/// The rules that send local destinations to a node-port tree root.
fn nodeport_hook(cfg: &RenderConfig, target: &str) -> Vec<String> {
    let mut rules = Vec::new();
    let comment = "switchyard service nodeports";
    if cfg.loopback_nodeports_blocked() {
        rules.push(Rule::new().destination(cfg.loopback()).jump("RETURN").render());
    }
    let local = || Rule::new().comment(comment).matcher("addrtype", "--dst-type LOCAL");
    match &cfg.nodeport_addresses {
        NodePortAddresses::All => rules.push(local().jump(target).render()),
        NodePortAddresses::Primary => {
            for ip in cfg.node_ips.iter().filter(|ip| IpFamily::of(ip) == cfg.family) {
                rules.push(Rule::new().destination(net(*ip)).comment(comment).jump(target).render());
            }
        }
        NodePortAddresses::Cidrs(cidrs) => {
            for c in cidrs.iter().filter(|c| matches!(c, IpNet::V4(_)) == (cfg.family == IpFamily::V4)) {
                rules.push(
                    Rule::new()
                        .destination(c)
                        .comment(comment)
                        .matcher("addrtype", "--dst-type LOCAL")
                        .jump(target)
                        .render(),
                );
            }
        }
    }
    rules
}

/// The fixed chains (everything but trees and Services' own chains).
fn static_chains(cfg: &RenderConfig) -> Vec<DesiredChain<'static>> {
    let mark = cfg.mark();
    let new = || Rule::new().matcher("conntrack", "--ctstate NEW");
    let mut masquerade = Rule::new().comment("switchyard service traffic requiring SNAT");
    masquerade = if cfg.random_fully {
        masquerade.jump_with("MASQUERADE", "--random-fully")
    } else {
        masquerade.jump("MASQUERADE")
    };
    let mut chains = vec![
        owned(
            Table::Nat,
            names::POSTROUTING,
            vec![
                Rule::new().matcher("conntrack", "--ctstate DNAT").jump(names::HAIRPIN).render(),
                Rule::new().matcher("mark", &format!("! --mark {mark}")).jump("RETURN").render(),
                Rule::new().jump_with("MARK", &format!("--set-xmark {:#x}/0x0", cfg.masquerade_mark)).render(),
                masquerade.render(),
            ],
        ),
        owned(Table::Nat, names::CANARY, vec![canary_rule()]),
        owned(Table::Filter, names::CANARY, vec![canary_rule()]),
    ];
    let cidrs: Vec<&IpNet> = cfg.cluster_cidrs().collect();
    if cfg.masquerade.detects_local() && !cfg.masquerade.all && cidrs.len() > 1 {
        let mut rules: Vec<String> = cidrs.iter().map(|c| Rule::new().source(c).jump("RETURN").render()).collect();
        rules.push(cfg.mark_masq(Rule::new()).render());
        chains.push(owned(Table::Nat, names::NONPOD_MASQ, rules));
    }
    let martian = cfg.localhost_nodeports_active().then(|| {
        Rule::new()
            .not_source("127.0.0.0/8")
            .destination("127.0.0.0/8")
            .comment("block incoming localnet connections")
            .matcher("conntrack", "! --ctstate RELATED,ESTABLISHED,DNAT")
            .jump("DROP")
            .render()
    });
    let mut input = vec![new().jump(names::FIREWALL).render(), Rule::new().jump(names::HEALTHCHECKS).render()];
    input.extend(martian.clone());
    let mut output = vec![new().jump(names::FIREWALL).render()];
    output.extend(martian);
    chains.push(owned(Table::Filter, names::INPUT, input));
    chains.push(owned(Table::Filter, names::OUTPUT, output));
    chains.push(owned(
        Table::Filter,
        names::FORWARD,
        vec![
            Rule::new().matcher("conntrack", "--ctstate INVALID").jump("DROP").render(),
            new().jump(names::FIREWALL).render(),
            Rule::new()
                .comment("switchyard forwarding rules")
                .matcher("mark", &format!("--mark {mark}"))
                .jump("ACCEPT")
                .render(),
            Rule::new()
                .comment("switchyard forwarding conntrack rule")
                .matcher("conntrack", "--ctstate RELATED,ESTABLISHED")
                .jump("ACCEPT")
                .render(),
        ],
    ));
    chains
}

/// The complete desired state of one family: every chain we own. `trees`
/// must have been refreshed against `services` ([`Trees::refresh`]).
pub fn desired<'a>(
    cfg: &RenderConfig,
    services: &'a BTreeMap<ServiceName, ServiceRules>,
    trees: &'a Trees,
) -> Vec<DesiredChain<'a>> {
    let mut chains: Vec<DesiredChain<'a>> = static_chains(cfg);
    chains.extend(services.values().flat_map(ServiceRules::desired_chains));
    chains.extend(trees.all(services));
    chains
}

/// (rules, chains) per table (nat, filter) of the fixed chains.
pub fn static_counts(cfg: &RenderConfig) -> [(usize, usize); 2] {
    let mut out = [(0, 0); 2];
    for c in static_chains(cfg) {
        let slot = &mut out[usize::from(c.table != Table::Nat)];
        slot.0 += c.rule_count();
        slot.1 += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_go_where_save_prints_them() {
        assert_eq!(
            with_comment("-d 1.2.3.4/32 -p tcp -m tcp --dport 80 -j X", "a b"),
            "-d 1.2.3.4/32 -p tcp -m comment --comment \"a b\" -m tcp --dport 80 -j X"
        );
        assert_eq!(
            with_comment("-j MARK --set-xmark 0x4000/0x4000", "a"),
            "-m comment --comment a -j MARK --set-xmark 0x4000/0x4000"
        );
        assert_eq!(with_comment("-s 10.0.0.0/8 -j X", "a"), "-s 10.0.0.0/8 -m comment --comment a -j X");
        assert_eq!(probability_text(1.0 / 3.0), "0.33333333349");
        assert_eq!(probability_text(0.5), "0.50000000000");
    }

    #[test]
    fn canary_has_no_verdict_and_no_extension() {
        // Anything more would make every periodic sync re-validate the whole
        // nf_tables table (see `canary_rule`).
        let canary = crate::parse::parse_rule(&canary_rule()).unwrap();
        assert!(canary.matches.is_empty(), "{:?}", canary.matches);
        assert_eq!(canary.target, crate::parse::Target::None);
    }
}
