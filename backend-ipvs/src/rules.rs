//! Helper netfilter state: IP sets (`ipset restore`) and a fixed set of
//! iptables rules (`iptables-restore --noflush`) that reference them.
//!
//! IPVS balances; what it cannot do is done here, the way kube-proxy's ipvs
//! mode does it: mark for masquerade (ClusterIP from outside the cluster
//! CIDR or with `--masquerade-all`; external frontends with
//! externalTrafficPolicy Cluster), masquerade hairpin traffic (a pod reaching
//! itself) and node-originated traffic whose source is a VIP, drop
//! loadBalancerSourceRanges violations and frontends whose verdict is Drop.
//! Reject needs no rule: IPVS answers ICMP port-unreachable itself for a
//! virtual server without a usable real server (`ip_vs_leave`).
//!
//! The rules never change with Services, only with the masquerade
//! configuration; Services change set members. Partial syncs therefore touch
//! only sets (`add`/`del`), full syncs rebuild each set and swap it in.
//!
//! The few static rules are spelled out here, in the form `iptables-save`
//! prints them, so that a full sync compares them with the kernel's
//! (backend-iptables' parser and rule comparison) and rewrites them only
//! when someone changed them. They are read and written through
//! backend-iptables' rule writer ([`RuleWriter`]: its executor, the nft or
//! legacy implementation it detects, the configured masquerade mark).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::Stdio;

use backend_iptables::drift::{differing_rules, same_rule};
use backend_iptables::exec::{Executor, SystemExecutor, Tool, Variant};
use backend_iptables::parse::Ruleset;
use backend_iptables::render::{ChainBody, DesiredChain};
use backend_iptables::restore::Table;
use ipnet::IpNet;
use proxy_core::{IpFamily, MasqueradeConfig, NetNamespace, Protocol};

/// The masquerade mark bit (kube-proxy's default `--iptables-masquerade-bit` 14).
/// How the helper rules reach the kernel: through backend-iptables' rule
/// writer (its `Executor` for restore and save, its binaries for the
/// implementation it detected: nft or legacy) with the configured mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleWriter {
    pub variant: Variant,
    /// `1 << masqueradeBit`.
    pub mark: u32,
}

impl RuleWriter {
    /// `0x4000/0x4000` for bit 14.
    fn mark(&self) -> String {
        format!("{:#x}/{:#x}", self.mark, self.mark)
    }

    fn iptables(&self, family: IpFamily) -> String {
        self.variant.binary(family, Tool::Iptables)
    }

    fn executor(&self, netns: &NetNamespace) -> SystemExecutor {
        SystemExecutor { netns: netns.clone(), variant: self.variant }
    }
}

/// Sets earlier versions made and this one does not (cleanup removes them).
const LEGACY_SETS: [&str; 1] = ["SWITCHYARD-LOCAL-POLICY"];

/// The IP sets we own; the names carry our prefix and the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    /// Every VIP on switchyard0 (`hash:ip`): node traffic from such a source is masqueraded.
    Vips,
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
    /// Frontends whose flow table masquerades every class of source.
    MasqAll,
    /// Frontends whose flow table masquerades every class but pods.
    MasqNotPod,
    /// Frontends whose flow table masquerades only the node's own traffic.
    MasqNode,
    /// Frontends whose verdict is Drop.
    Drop,
    /// Load-balancer frontends with loadBalancerSourceRanges.
    LbFirewall,
    /// (LB IP, port, allowed source CIDR) (`hash:ip,port,net`).
    LbSource,
    /// (endpoint, port, endpoint) for hairpin (`hash:ip,port,ip`).
    Loopback,
}

impl SetKind {
    pub const ALL: [SetKind; 12] = [
        SetKind::Vips,
        SetKind::ClusterIp,
        SetKind::ExternalIp,
        SetKind::LoadBalancer,
        SetKind::NodePort,
        SetKind::MasqAll,
        SetKind::MasqNotPod,
        SetKind::MasqNode,
        SetKind::Drop,
        SetKind::LbFirewall,
        SetKind::LbSource,
        SetKind::Loopback,
    ];

    fn base(self) -> &'static str {
        match self {
            SetKind::Vips => "SWITCHYARD-VIPS",
            SetKind::ClusterIp => "SWITCHYARD-CLUSTER-IP",
            SetKind::ExternalIp => "SWITCHYARD-EXTERNAL-IP",
            SetKind::LoadBalancer => "SWITCHYARD-LB-IP",
            SetKind::NodePort => "SWITCHYARD-NODE-PORT",
            SetKind::MasqAll => "SWITCHYARD-MASQ-ALL",
            SetKind::MasqNotPod => "SWITCHYARD-MASQ-NOT-POD",
            SetKind::MasqNode => "SWITCHYARD-MASQ-NODE",
            SetKind::Drop => "SWITCHYARD-DROP",
            SetKind::LbFirewall => "SWITCHYARD-LB-FW",
            SetKind::LbSource => "SWITCHYARD-LB-SRC",
            SetKind::Loopback => "SWITCHYARD-LOOPBACK",
        }
    }

    /// `SWITCHYARD-CLUSTER-IP` for IPv4, `SWITCHYARD-CLUSTER-IP6` for IPv6 (≤ 31 characters).
    pub fn name(self, family: IpFamily) -> String {
        match family {
            IpFamily::V4 => self.base().to_string(),
            IpFamily::V6 => format!("{}6", self.base()),
        }
    }

    fn set_type(self) -> &'static str {
        match self {
            SetKind::Vips => "hash:ip",
            SetKind::LbSource => "hash:ip,port,net",
            SetKind::Loopback => "hash:ip,port,ip",
            _ => "hash:ip,port",
        }
    }
}

/// One member of a set, in `ipset` syntax.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member(pub String);

impl Member {
    pub fn ip(ip: IpAddr) -> Member {
        Member(ip.to_string())
    }

    pub fn ip_port(ip: IpAddr, protocol: Protocol, port: u16) -> Member {
        Member(format!("{ip},{}:{port}", protocol.as_lower_str()))
    }

    pub fn ip_port_net(ip: IpAddr, protocol: Protocol, port: u16, net: IpNet) -> Member {
        // `ipset save` prints a host-sized net without its prefix; members
        // must read back exactly as written, or full syncs would churn them.
        let net =
            if net.prefix_len() == net.max_prefix_len() { net.addr().to_string() } else { net.trunc().to_string() };
        Member(format!("{ip},{}:{port},{net}", protocol.as_lower_str()))
    }

    pub fn ip_port_ip(ip: IpAddr, protocol: Protocol, port: u16, other: IpAddr) -> Member {
        Member(format!("{ip},{}:{port},{other}", protocol.as_lower_str()))
    }
}

/// Desired contents of every set of one family.
pub type Sets = BTreeMap<(SetKind, IpFamily), BTreeSet<Member>>;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("running {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
    /// backend-iptables' rule writer failed (its error names the program).
    #[error("writing the helper rules")]
    Iptables(#[from] backend_iptables::Error),
}

/// Runs a program with `input` on stdin inside `netns`.
fn run(netns: &NetNamespace, program: &str, args: &[&str], input: &str) -> Result<String, RulesError> {
    let command = format!("{program} {}", args.join(" "));
    let spawn_err = |source| RulesError::Spawn { command: command.clone(), source };
    let mut child = netns
        .command(program)
        .map_err(spawn_err)?
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(RulesError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ipset_family(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "inet",
        IpFamily::V6 => "inet6",
    }
}

/// `ipset restore` input that makes every set exactly `sets`: each set is
/// filled under a temporary name and swapped in, so matching never sees a
/// half-filled set.
pub fn full_sets_script(sets: &Sets, families: &[IpFamily]) -> String {
    let mut s = String::new();
    for family in families {
        for kind in SetKind::ALL {
            let name = kind.name(*family);
            let tmp = format!("{name}-T");
            let header = format!("{} family {} hashsize 1024 maxelem 1048576", kind.set_type(), ipset_family(*family));
            let _ = writeln!(s, "create {name} {header}");
            let _ = writeln!(s, "create {tmp} {header}");
            let _ = writeln!(s, "flush {tmp}");
            for m in sets.get(&(kind, *family)).into_iter().flatten() {
                let _ = writeln!(s, "add {tmp} {}", m.0);
            }
            let _ = writeln!(s, "swap {tmp} {name}");
            let _ = writeln!(s, "destroy {tmp}");
        }
    }
    s
}

/// Every member of our sets as the kernel has them (`ipset save`), for full syncs.
pub fn read_all_sets(netns: &NetNamespace) -> Result<Sets, RulesError> {
    let out = run(netns, "ipset", &["save"], "")?;
    Ok(parse_save(&out))
}

/// Parses `ipset save` output, keeping our sets only (not the temporary ones).
pub fn parse_save(out: &str) -> Sets {
    let mut by_name = BTreeMap::new();
    for family in IpFamily::ALL {
        for kind in SetKind::ALL {
            by_name.insert(kind.name(family), (kind, family));
        }
    }
    let mut sets = Sets::new();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next().and_then(|n| by_name.get(n)), words.next()) {
            (Some("create"), Some(key), _) => {
                sets.entry(*key).or_default();
            }
            (Some("add"), Some(key), Some(member)) => {
                sets.entry(*key).or_default().insert(Member(member.to_string()));
            }
            _ => {}
        }
    }
    sets
}

/// `ipset restore` input that makes the sets `want` from the kernel's `have`:
/// creates missing sets and adds and deletes only the members that differ
/// (a full sync that finds everything in place writes nothing).
pub fn reconcile_sets_script(have: &Sets, want: &Sets, families: &[IpFamily]) -> String {
    let mut s = String::new();
    for family in families {
        for kind in SetKind::ALL {
            if !have.contains_key(&(kind, *family)) {
                let _ = writeln!(
                    s,
                    "create {} {} family {} hashsize 1024 maxelem 1048576",
                    kind.name(*family),
                    kind.set_type(),
                    ipset_family(*family)
                );
            }
        }
    }
    s.push_str(&diff_sets_script(have, want));
    s
}

/// `ipset restore` input for the difference between two states (partial sync).
pub fn diff_sets_script(old: &Sets, new: &Sets) -> String {
    let mut s = String::new();
    let empty = BTreeSet::new();
    let keys: BTreeSet<&(SetKind, IpFamily)> = old.keys().chain(new.keys()).collect();
    for key in keys {
        let name = key.0.name(key.1);
        let before = old.get(key).unwrap_or(&empty);
        let after = new.get(key).unwrap_or(&empty);
        for m in after.difference(before) {
            let _ = writeln!(s, "add {name} {}", m.0);
        }
        for m in before.difference(after) {
            let _ = writeln!(s, "del {name} {}", m.0);
        }
    }
    s
}

/// What differed between the kernel's sets (`have`) and what we wrote last
/// (`previous`), where the plans did not change it since (`want`): sets
/// missing altogether (names), and members missing or added by someone else.
pub fn set_drift(have: &Sets, want: &Sets, previous: &Sets, families: &[IpFamily]) -> (Vec<String>, usize) {
    let empty = BTreeSet::new();
    let mut missing_sets = Vec::new();
    let mut members = 0;
    for family in families {
        for kind in SetKind::ALL {
            let key = (kind, *family);
            let Some(found) = have.get(&key) else {
                missing_sets.push(kind.name(*family));
                continue;
            };
            let (want, before) = (want.get(&key).unwrap_or(&empty), previous.get(&key).unwrap_or(&empty));
            members += want.difference(found).filter(|m| before.contains(*m)).count();
            members += found.difference(want).filter(|m| !before.contains(*m)).count();
        }
    }
    (missing_sets, members)
}

pub fn apply_sets(netns: &NetNamespace, script: &str) -> Result<(), RulesError> {
    if script.is_empty() {
        return Ok(());
    }
    // -exist: creating an existing set, adding a present or deleting an absent member is not an error.
    run(netns, "ipset", &["restore", "-exist"], script).map(drop)
}

/// Our chains and the jumps into them from the built-in chains.
const NAT_CHAINS: [&str; 4] =
    ["SWITCHYARD-IPVS-SERVICES", "SWITCHYARD-IPVS-CLUSTER", "SWITCHYARD-IPVS-MARK-MASQ", "SWITCHYARD-IPVS-POSTROUTING"];
const FILTER_CHAINS: [&str; 1] = ["SWITCHYARD-IPVS-FILTER"];
const JUMPS: [(&str, &str, &str); 4] = [
    ("nat", "PREROUTING", "SWITCHYARD-IPVS-SERVICES"),
    ("nat", "OUTPUT", "SWITCHYARD-IPVS-SERVICES"),
    ("nat", "POSTROUTING", "SWITCHYARD-IPVS-POSTROUTING"),
    ("filter", "INPUT", "SWITCHYARD-IPVS-FILTER"),
];

/// The `iptables-restore --noflush` input for one family: our chains, fully
/// rewritten (declaring a chain in a restore flushes it).
pub fn rules_script(family: IpFamily, masq: &MasqueradeConfig, w: &RuleWriter) -> String {
    let mark = w.mark();
    let set = |k: SetKind| k.name(family);
    let mut s = String::from("*nat\n");
    for c in NAT_CHAINS {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    let c = "-m comment --comment";
    // Masquerade as each frontend's flow table says: the frontend is in the
    // set of its cells' masquerade shape (reconcile::add_port_plan).
    let _ = writeln!(
        s,
        "-A SWITCHYARD-IPVS-SERVICES {c} \"masquerade every source\" -m set --match-set {} dst,dst -j SWITCHYARD-IPVS-MARK-MASQ",
        set(SetKind::MasqAll)
    );
    let _ = writeln!(
        s,
        "-A SWITCHYARD-IPVS-SERVICES {c} \"masquerade all but pods\" -m set --match-set {} dst,dst -j SWITCHYARD-IPVS-CLUSTER",
        set(SetKind::MasqNotPod)
    );
    let _ = writeln!(
        s,
        "-A SWITCHYARD-IPVS-SERVICES {c} \"masquerade the node\" -m set --match-set {} dst,dst -m addrtype --src-type LOCAL -j SWITCHYARD-IPVS-MARK-MASQ",
        set(SetKind::MasqNode)
    );
    // Pods are the sources in a cluster CIDR of this family (Snapshot::classify_source).
    for cidr in masq
        .cluster_cidrs
        .iter()
        .filter(|n| matches!((n, family), (IpNet::V4(_), IpFamily::V4) | (IpNet::V6(_), IpFamily::V6)))
    {
        // Generic options first, as iptables-save prints them: full syncs
        // compare the kernel's text with this one.
        let _ = writeln!(s, "-A SWITCHYARD-IPVS-CLUSTER -s {cidr} {c} \"pod source\" -j RETURN");
    }
    let _ = writeln!(s, "-A SWITCHYARD-IPVS-CLUSTER {c} \"not a pod: masquerade\" -j SWITCHYARD-IPVS-MARK-MASQ");
    let _ = writeln!(s, "-A SWITCHYARD-IPVS-MARK-MASQ -j MARK --set-xmark {mark}");
    let _ = writeln!(
        s,
        "-A SWITCHYARD-IPVS-POSTROUTING {c} \"hairpin\" -m set --match-set {} dst,dst,src -j MASQUERADE",
        set(SetKind::Loopback)
    );
    let _ = writeln!(
        s,
        "-A SWITCHYARD-IPVS-POSTROUTING {c} \"node traffic with a VIP source\" -m set --match-set {} src -j MASQUERADE",
        set(SetKind::Vips)
    );
    let _ = writeln!(s, "-A SWITCHYARD-IPVS-POSTROUTING -m mark ! --mark {mark} -j RETURN");
    let _ = writeln!(s, "-A SWITCHYARD-IPVS-POSTROUTING -j MARK --set-xmark 0x0/{:#x}", w.mark);
    let _ = writeln!(s, "-A SWITCHYARD-IPVS-POSTROUTING {c} \"masquerade per plan\" -j MASQUERADE");
    s.push_str("COMMIT\n*filter\n");
    for c in FILTER_CHAINS {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    // The filter INPUT hook (priority 0) runs before IPVS's LOCAL_IN hook (98).
    let _ = writeln!(
        s,
        "-A SWITCHYARD-IPVS-FILTER {c} \"loadBalancerSourceRanges\" -m set --match-set {} dst,dst -m set ! --match-set {} dst,dst,src -m addrtype ! --src-type LOCAL -j DROP",
        set(SetKind::LbFirewall),
        set(SetKind::LbSource)
    );
    let _ = writeln!(
        s,
        "-A SWITCHYARD-IPVS-FILTER {c} \"no usable endpoint: drop\" -m set --match-set {} dst,dst -m addrtype ! --src-type LOCAL -j DROP",
        set(SetKind::Drop)
    );
    s.push_str("COMMIT\n");
    s
}

/// What [`reconcile_rules`] found changed behind our back and put right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RulesRepair {
    /// Our chains that were missing.
    pub chains: usize,
    /// Rules of our chains that were missing, changed or added.
    pub rules: usize,
    /// Jumps from built-in chains into ours that were missing.
    pub jumps: usize,
}

fn hook_rule(target: &str) -> String {
    format!("-m comment --comment \"switchyard ipvs\" -j {target}")
}

/// `iptables-save -t nat` and `-t filter` of one family.
fn read_tables(netns: &NetNamespace, family: IpFamily, w: &RuleWriter) -> Result<Ruleset, RulesError> {
    let save = w.variant.binary(family, Tool::Save);
    let exec = w.executor(netns);
    let mut rs = Ruleset::default();
    for table in [Table::Nat, Table::Filter] {
        let out = exec.save(family, table)?;
        let parsed = Ruleset::parse_save(&out).map_err(|e| RulesError::Failed {
            command: format!("{save} -t {}", table.as_str()),
            status: "unreadable output".into(),
            stderr: e.to_string(),
        })?;
        rs.tables.extend(parsed.tables);
    }
    Ok(rs)
}

/// Makes our chains and the jumps into them exactly what [`rules_script`]
/// says, for every family, writing only when something differs: reads the
/// nat and filter tables back (`iptables-save`), rewrites our chains if any
/// rule differs (`iptables-restore --noflush`), inserts missing jumps at the
/// top (`iptables -I`). Returns what differed.
pub fn reconcile_rules(
    netns: &NetNamespace,
    families: &[IpFamily],
    masq: &MasqueradeConfig,
    w: &RuleWriter,
) -> Result<RulesRepair, RulesError> {
    let mut repair = RulesRepair::default();
    for family in families {
        let script = rules_script(*family, masq, w);
        let want = Ruleset::parse_save(&script).map_err(|e| RulesError::Failed {
            command: "rules_script".into(),
            status: "unreadable".into(),
            stderr: e.to_string(),
        })?;
        let have = read_tables(netns, *family, w)?;
        let mut rewrite = false;
        for (table, t) in &want.tables {
            for (name, chain) in &t.chains {
                let desired = DesiredChain {
                    table: *table,
                    name: std::borrow::Cow::Borrowed(name.as_str()),
                    hash: 0,
                    body: ChainBody::Service(&chain.rules),
                };
                match have.table(*table).and_then(|t| t.chain(name)) {
                    None => {
                        repair.chains += 1;
                        rewrite = true;
                    }
                    Some(found) => {
                        let n = differing_rules(&found.rules, &desired);
                        repair.rules += n;
                        rewrite |= n > 0;
                    }
                }
            }
        }
        if rewrite {
            w.executor(netns).restore(*family, &script)?;
        }
        for (table, chain, target) in JUMPS {
            let hook = hook_rule(target);
            let present = Table::parse(table)
                .and_then(|t| have.table(t))
                .is_some_and(|t| t.rules(chain).iter().any(|r| same_rule(r, &hook)));
            if !present {
                let mut insert = vec!["-w", "-t", table, "-I", chain, "1"];
                insert.extend(["-m", "comment", "--comment", "switchyard ipvs", "-j", target]);
                run(netns, &w.iptables(*family), &insert, "")?;
                repair.jumps += 1;
            }
        }
    }
    Ok(repair)
}

/// Removes our jumps, chains and sets (`iptables -D`, `-F`, `-X`; `ipset destroy`).
/// Absent objects are fine.
pub fn cleanup(netns: &NetNamespace, families: &[IpFamily]) -> Result<(), RulesError> {
    for family in families {
        // From a fresh process: remove our rules from whichever implementation
        // holds them (one that is not installed just fails, and is skipped).
        for variant in [Variant::Nft, Variant::Legacy, Variant::Plain] {
            cleanup_rules(netns, &variant.binary(*family, Tool::Iptables));
        }
        let legacy = LEGACY_SETS.iter().map(|base| match family {
            IpFamily::V4 => base.to_string(),
            IpFamily::V6 => format!("{base}6"),
        });
        for name in SetKind::ALL.iter().map(|kind| kind.name(*family)).chain(legacy) {
            if run(netns, "ipset", &["list", "-n", &name], "").is_ok() {
                run(netns, "ipset", &["destroy", &name], "")?;
            }
        }
    }
    Ok(())
}

/// `ipset destroy` of every set whose name `remove` picks (`ipset list -n`
/// first); returns the sets destroyed. No `ipset` program, or no ip_set in the
/// kernel, means no sets: nothing to do. Run it after the iptables rules that
/// referenced the sets are gone (the kernel refuses to destroy a set in use).
pub fn destroy_sets(netns: &NetNamespace, remove: &dyn Fn(&str) -> bool) -> Result<Vec<String>, RulesError> {
    let names = match run(netns, "ipset", &["list", "-n"], "") {
        Ok(out) => out,
        Err(e) => {
            tracing::debug!(error = %e, "no ipset here: no sets to destroy");
            return Ok(Vec::new());
        }
    };
    let mut destroyed = Vec::new();
    for name in names.lines().map(str::trim).filter(|n| remove(n)) {
        run(netns, "ipset", &["destroy", name], "")?;
        destroyed.push(name.to_string());
    }
    Ok(destroyed)
}

/// Our jumps and chains, with one iptables binary; absent ones are fine.
fn cleanup_rules(netns: &NetNamespace, ipt: &str) {
    for (table, chain, target) in JUMPS {
        let rule = ["-m", "comment", "--comment", "switchyard ipvs", "-j", target];
        loop {
            let mut del = vec!["-w", "-t", table, "-D", chain];
            del.extend(rule);
            if run(netns, ipt, &del, "").is_err() {
                break;
            }
        }
    }
    for (table, chains) in [("nat", &NAT_CHAINS[..]), ("filter", &FILTER_CHAINS[..])] {
        for c in chains {
            let _ = run(netns, ipt, &["-w", "-t", table, "-F", c], "");
        }
        for c in chains {
            let _ = run(netns, ipt, &["-w", "-t", table, "-X", c], "");
        }
    }
}

/// `ipset list NAME`: the members of one of our sets, for `inspect()`.
pub fn read_set(netns: &NetNamespace, kind: SetKind, family: IpFamily) -> Result<BTreeSet<Member>, RulesError> {
    let out = match run(netns, "ipset", &["list", &kind.name(family)], "") {
        Ok(out) => out,
        Err(RulesError::Failed { .. }) => return Ok(BTreeSet::new()),
        Err(e) => return Err(e),
    };
    Ok(out
        .lines()
        .skip_while(|l| !l.starts_with("Members:"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| Member(l.split_whitespace().next().unwrap_or_default().to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_names_fit_the_kernel_limit() {
        for k in SetKind::ALL {
            for f in IpFamily::ALL {
                // IPSET_MAXNAMELEN is 32 with the NUL; the temporary name adds "-T".
                assert!(k.name(f).len() + 2 <= 31, "{}", k.name(f));
            }
        }
    }

    #[test]
    fn member_syntax() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(Member::ip_port(ip, Protocol::Sctp, 80).0, "10.0.0.1,sctp:80");
        assert_eq!(
            Member::ip_port_net(ip, Protocol::Tcp, 80, "1.2.0.0/16".parse().unwrap()).0,
            "10.0.0.1,tcp:80,1.2.0.0/16"
        );
    }

    #[test]
    fn full_and_diff_scripts() {
        let ip: IpAddr = "10.96.0.1".parse().unwrap();
        let mut sets = Sets::new();
        sets.entry((SetKind::ClusterIp, IpFamily::V4)).or_default().insert(Member::ip_port(ip, Protocol::Tcp, 443));
        let full = full_sets_script(&sets, &[IpFamily::V4]);
        assert!(full.contains("create SWITCHYARD-CLUSTER-IP hash:ip,port family inet"));
        assert!(full.contains(
            "add SWITCHYARD-CLUSTER-IP-T 10.96.0.1,tcp:443\nswap SWITCHYARD-CLUSTER-IP-T SWITCHYARD-CLUSTER-IP\n"
        ));
        let mut next = sets.clone();
        next.entry((SetKind::ClusterIp, IpFamily::V4)).or_default().insert(Member::ip_port(ip, Protocol::Udp, 53));
        next.entry((SetKind::ClusterIp, IpFamily::V4)).or_default().remove(&Member::ip_port(ip, Protocol::Tcp, 443));
        assert_eq!(
            diff_sets_script(&sets, &next),
            "add SWITCHYARD-CLUSTER-IP 10.96.0.1,udp:53\ndel SWITCHYARD-CLUSTER-IP 10.96.0.1,tcp:443\n"
        );
    }

    #[test]
    fn save_output_is_reconciled_member_by_member() {
        let save = "create SWITCHYARD-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x1\n\
                    add SWITCHYARD-CLUSTER-IP 10.96.0.1,tcp:443\n\
                    add SWITCHYARD-CLUSTER-IP 10.96.0.9,udp:53\n\
                    create OTHER hash:ip family inet\n\
                    add OTHER 1.2.3.4\n";
        let have = parse_save(save);
        assert_eq!(have.len(), 1, "only our sets are read");
        let mut want = Sets::new();
        want.entry((SetKind::ClusterIp, IpFamily::V4)).or_default().insert(Member::ip_port(
            "10.96.0.1".parse().unwrap(),
            Protocol::Tcp,
            443,
        ));
        let script = reconcile_sets_script(&have, &want, &[IpFamily::V4]);
        assert!(script.contains("create SWITCHYARD-VIPS hash:ip family inet"));
        assert!(!script.contains("create SWITCHYARD-CLUSTER-IP "));
        assert!(script.ends_with("del SWITCHYARD-CLUSTER-IP 10.96.0.9,udp:53\n"), "{script}");
        assert!(!script.contains("add SWITCHYARD-CLUSTER-IP"));
    }

    const W: RuleWriter = RuleWriter { variant: Variant::Nft, mark: 0x4000 };

    /// The configured mark is the one the rules set and test, not 0x4000.
    #[test]
    fn rules_use_the_configured_mark() {
        let w = RuleWriter { variant: Variant::Legacy, mark: 1 << 3 };
        let s = rules_script(IpFamily::V4, &MasqueradeConfig::default(), &w);
        assert!(s.contains("-j MARK --set-xmark 0x8/0x8") && s.contains("! --mark 0x8/0x8"), "{s}");
        assert!(s.contains("--set-xmark 0x0/0x8") && !s.contains("0x4000"), "{s}");
        assert_eq!(w.iptables(IpFamily::V6), "ip6tables-legacy");
    }

    /// The rules match the three masquerade sets; which frontend is in
    /// which is the flow table's decision. Pods are the family's CIDRs.
    #[test]
    fn rules_match_the_masquerade_sets() {
        let cidr = MasqueradeConfig {
            all: false,
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap(), "fd00::/64".parse().unwrap()],
        };
        let v4 = rules_script(IpFamily::V4, &cidr, &W);
        for set in ["SWITCHYARD-MASQ-ALL dst,dst", "SWITCHYARD-MASQ-NOT-POD dst,dst", "SWITCHYARD-MASQ-NODE dst,dst"] {
            assert!(v4.contains(set), "{set} in {v4}");
        }
        assert!(v4.contains("-s 10.244.0.0/16 -m comment") && !v4.contains("fd00::/64"));
        assert!(rules_script(IpFamily::V6, &cidr, &W).contains("SWITCHYARD-MASQ-ALL6"));
        // No pod CIDR: "all but pods" is everyone.
        let none = rules_script(IpFamily::V4, &MasqueradeConfig::default(), &W);
        assert!(!none.contains("pod source"));
    }
}
