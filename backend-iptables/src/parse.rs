//! Reading rules back: `iptables-save` output into a [`Ruleset`], and rule
//! text into a [`ParsedRule`] the packet tracer and `inspect()` evaluate.
//!
//! The parser knows the matches and targets this crate writes (and the
//! forms `iptables-save` prints for them); anything else becomes
//! [`Cond::Other`] / [`Target::Other`], which the tracer refuses to guess about.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::restore::Table;

/// A line iptables-save printed that we cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
    pub text: String,
}

/// Splits a restore/save line into words the way `iptables-restore` does:
/// whitespace separates, double quotes group, a backslash inside quotes
/// escapes the next character.
pub fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '\\' => match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err("backslash at end of line".into()),
                },
                '"' => quoted = false,
                _ => cur.push(c),
            }
        } else if c == '"' {
            quoted = true;
            in_word = true;
        } else if c.is_whitespace() {
            if in_word {
                out.push(std::mem::take(&mut cur));
                in_word = false;
            }
        } else {
            cur.push(c);
            in_word = true;
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// One chain: its policy (built-in chains only) and rule texts in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// `ACCEPT`/`DROP` for built-in chains, `None` for user chains.
    pub policy: Option<String>,
    /// Each rule as the text after `-A CHAIN `.
    pub rules: Vec<String>,
}

/// The chains of one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableRules {
    pub chains: BTreeMap<String, Chain>,
}

impl TableRules {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.get(name)
    }

    pub fn rules(&self, chain: &str) -> &[String] {
        self.chains.get(chain).map(|c| c.rules.as_slice()).unwrap_or(&[])
    }

    /// The number of rules in every chain.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }
}

/// Tables as `iptables-save` prints them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: BTreeMap<Table, TableRules>,
}

impl Ruleset {
    /// Parses `iptables-save` output (tables other than filter/nat/mangle/raw are skipped).
    pub fn parse_save(text: &str) -> Result<Ruleset, ParseError> {
        let mut rs = Ruleset::default();
        let mut current: Option<Table> = None;
        let mut skipping = false;
        for (i, line) in text.lines().enumerate() {
            let err = |reason: &str| ParseError { line: i + 1, reason: reason.into(), text: line.into() };
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                current = Table::parse(name);
                skipping = current.is_none();
                if let Some(t) = current {
                    rs.tables.entry(t).or_default();
                }
                continue;
            }
            if line == "COMMIT" {
                current = None;
                skipping = false;
                continue;
            }
            if skipping {
                continue;
            }
            let Some(table) = current else { return Err(err("outside a table")) };
            let tr = rs.tables.entry(table).or_default();
            if let Some(decl) = line.strip_prefix(':') {
                let mut parts = decl.split_whitespace();
                let name = parts.next().ok_or_else(|| err("chain without name"))?;
                let policy = parts.next().filter(|p| *p != "-").map(str::to_string);
                tr.chains.entry(name.to_string()).or_default().policy = policy;
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
                tr.chains.entry(chain.to_string()).or_default().rules.push(rule.to_string());
            } else {
                return Err(err("unexpected line"));
            }
        }
        Ok(rs)
    }

    pub fn table(&self, table: Table) -> Option<&TableRules> {
        self.tables.get(&table)
    }

    /// Renders back in iptables-save's format (chains sorted by name).
    pub fn render_save(&self) -> String {
        let mut out = String::new();
        for (table, tr) in &self.tables {
            out.push('*');
            out.push_str(table.as_str());
            out.push('\n');
            let builtins = table.builtin_chains();
            let ordered = builtins
                .iter()
                .filter_map(|b| tr.chains.get_key_value(*b))
                .chain(tr.chains.iter().filter(|(n, _)| !builtins.contains(&n.as_str())));
            let ordered: Vec<_> = ordered.collect();
            for (name, chain) in &ordered {
                out.push_str(&format!(":{name} {} [0:0]\n", chain.policy.as_deref().unwrap_or("-")));
            }
            for (name, chain) in &ordered {
                for r in &chain.rules {
                    out.push_str(&format!("-A {name} {r}\n"));
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// `recent`'s operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecentOp {
    Set,
    Rcheck,
    Update,
    Remove,
}

/// A condition of a rule, as the tracer evaluates it.
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    Source(IpNet),
    Destination(IpNet),
    InInterface(String),
    OutInterface(String),
    /// `-p NAME` (lower case).
    Protocol(String),
    /// `--dport LO[:HI]` of a tcp/udp/sctp match.
    DPort(u16, u16),
    SPort(u16, u16),
    /// `-m addrtype --src-type TYPE`
    SrcType(String),
    /// `-m addrtype --dst-type TYPE`
    DstType(String),
    /// `-m conntrack --ctstate A,B`
    CtState(Vec<String>),
    /// `-m mark --mark VALUE/MASK`
    Mark {
        value: u32,
        mask: u32,
    },
    /// `-m statistic --mode random --probability P`, as the kernel stores it: out of 2^31.
    Statistic {
        probability: u32,
    },
    /// `-m recent ...`
    Recent {
        name: String,
        op: RecentOp,
        seconds: Option<u32>,
    },
    /// `-m comment --comment TEXT`, as written (see [`crate::restore::unescape_comment`]).
    Comment(String),
    /// Anything else: (module, option words).
    Other(String, Vec<String>),
}

/// One condition, possibly negated.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    pub negated: bool,
    pub cond: Cond,
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// No `-j`: counts and continues.
    None,
    Jump(String),
    Goto(String),
    Accept,
    Drop,
    Return,
    Reject,
    Dnat {
        ip: IpAddr,
        port: Option<u16>,
    },
    /// `MARK`: the kernel does `mark = (mark & !mask) ^ value`.
    Mark {
        value: u32,
        mask: u32,
    },
    Masquerade {
        random_fully: bool,
    },
    Other(String, Vec<String>),
}

/// A rule read into conditions and a target.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedRule {
    pub matches: Vec<Match>,
    pub target: Target,
}

impl ParsedRule {
    /// The comment as written (escaped), if the rule has one.
    pub fn comment(&self) -> Option<&str> {
        self.matches.iter().find_map(|m| match &m.cond {
            Cond::Comment(c) => Some(c.as_str()),
            _ => None,
        })
    }

    /// The chain this rule jumps or goes to.
    pub fn chain_target(&self) -> Option<&str> {
        match &self.target {
            Target::Jump(c) | Target::Goto(c) => Some(c),
            _ => None,
        }
    }

    pub fn find(&self, f: impl Fn(&Cond) -> bool) -> Option<&Match> {
        self.matches.iter().find(|m| f(&m.cond))
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `VALUE[/MASK]` with a default mask.
fn parse_value_mask(s: &str, default_mask: u32) -> Option<(u32, u32)> {
    match s.split_once('/') {
        Some((v, m)) => Some((parse_u32(v)?, parse_u32(m)?)),
        None => Some((parse_u32(s)?, default_mask)),
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn parse_ports(s: &str) -> Option<(u16, u16)> {
    match s.split_once(':') {
        Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
        None => {
            let p = s.parse().ok()?;
            Some((p, p))
        }
    }
}

/// `IP[:PORT]` or `[IPv6][:PORT]`.
fn parse_dnat(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None => None,
        };
        return Some((ip.parse().ok()?, port));
    }
    match s.split_once(':') {
        Some((ip, port)) => Some((ip.parse().ok()?, Some(port.parse().ok()?))),
        None => Some((s.parse().ok()?, None)),
    }
}

/// Parses rule text (the part after `-A CHAIN`).
pub fn parse_rule(text: &str) -> Result<ParsedRule, String> {
    let words = tokenize(text)?;
    let mut matches = Vec::new();
    let mut target = Target::None;
    let mut module: Option<String> = None;
    let mut negate = false;
    let mut recent: Option<(bool, String, Option<RecentOp>, Option<u32>)> = None;
    let mut i = 0;
    let value = |i: usize| words.get(i + 1).cloned().ok_or_else(|| format!("{} needs a value", words[i]));
    let flush_recent = |recent: &mut Option<(bool, String, Option<RecentOp>, Option<u32>)>,
                        matches: &mut Vec<Match>| {
        if let Some((negated, name, op, seconds)) = recent.take() {
            let name = if name.is_empty() { "DEFAULT".to_string() } else { name };
            matches.push(Match { negated, cond: Cond::Recent { name, op: op.unwrap_or(RecentOp::Rcheck), seconds } });
        }
    };
    while i < words.len() {
        let w = words[i].as_str();
        let mut push = |cond: Cond, negate: &mut bool| {
            matches.push(Match { negated: std::mem::take(negate), cond });
        };
        match w {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-s" | "--source" | "-d" | "--destination" => {
                let v = value(i)?;
                let net = parse_net(&v).ok_or_else(|| format!("bad address {v:?}"))?;
                let cond =
                    if w.starts_with("-s") || w == "--source" { Cond::Source(net) } else { Cond::Destination(net) };
                push(cond, &mut negate);
                i += 2;
            }
            "-i" | "--in-interface" => {
                push(Cond::InInterface(value(i)?), &mut negate);
                i += 2;
            }
            "-o" | "--out-interface" => {
                push(Cond::OutInterface(value(i)?), &mut negate);
                i += 2;
            }
            "-p" | "--protocol" => {
                push(Cond::Protocol(value(i)?.to_lowercase()), &mut negate);
                i += 2;
            }
            "-m" | "--match" => {
                flush_recent(&mut recent, &mut matches);
                let m = value(i)?;
                if m == "recent" {
                    recent = Some((false, String::new(), None, None));
                }
                module = Some(m);
                i += 2;
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                flush_recent(&mut recent, &mut matches);
                let name = value(i)?;
                let args: Vec<String> = words[i + 2..].to_vec();
                target = if w == "-g" || w == "--goto" { Target::Goto(name) } else { parse_target(&name, &args)? };
                break;
            }
            opt if opt.starts_with("--") => {
                let m = module.clone().unwrap_or_default();
                match (m.as_str(), opt) {
                    ("tcp" | "udp" | "sctp", "--dport" | "--destination-port") => {
                        let v = value(i)?;
                        let (lo, hi) = parse_ports(&v).ok_or_else(|| format!("bad port {v:?}"))?;
                        push(Cond::DPort(lo, hi), &mut negate);
                        i += 2;
                    }
                    ("tcp" | "udp" | "sctp", "--sport" | "--source-port") => {
                        let v = value(i)?;
                        let (lo, hi) = parse_ports(&v).ok_or_else(|| format!("bad port {v:?}"))?;
                        push(Cond::SPort(lo, hi), &mut negate);
                        i += 2;
                    }
                    ("comment", "--comment") => {
                        push(Cond::Comment(value(i)?), &mut negate);
                        i += 2;
                    }
                    ("addrtype", "--src-type") => {
                        push(Cond::SrcType(value(i)?), &mut negate);
                        i += 2;
                    }
                    ("addrtype", "--dst-type") => {
                        push(Cond::DstType(value(i)?), &mut negate);
                        i += 2;
                    }
                    ("conntrack", "--ctstate") => {
                        let v = value(i)?;
                        push(Cond::CtState(v.split(',').map(str::to_string).collect()), &mut negate);
                        i += 2;
                    }
                    ("mark", "--mark") => {
                        let v = value(i)?;
                        let (value, mask) = parse_value_mask(&v, u32::MAX).ok_or_else(|| format!("bad mark {v:?}"))?;
                        push(Cond::Mark { value, mask }, &mut negate);
                        i += 2;
                    }
                    ("statistic", "--mode") => {
                        let v = value(i)?;
                        if v != "random" {
                            push(Cond::Other("statistic".into(), vec![opt.into(), v]), &mut negate);
                        }
                        i += 2;
                    }
                    ("statistic", "--probability") => {
                        let v = value(i)?;
                        let p: f64 = v.parse().map_err(|_| format!("bad probability {v:?}"))?;
                        // As iptables' libxt_statistic stores it.
                        let probability = (p * 2_147_483_648.0).round().clamp(0.0, u32::MAX as f64) as u32;
                        push(Cond::Statistic { probability }, &mut negate);
                        i += 2;
                    }
                    ("recent", _) => {
                        let r = recent.get_or_insert_with(|| (false, String::new(), None, None));
                        if std::mem::take(&mut negate) {
                            r.0 = true;
                        }
                        match opt {
                            "--set" => r.2 = Some(RecentOp::Set),
                            "--rcheck" => r.2 = Some(RecentOp::Rcheck),
                            "--update" => r.2 = Some(RecentOp::Update),
                            "--remove" => r.2 = Some(RecentOp::Remove),
                            "--reap" | "--rsource" | "--rdest" => {}
                            "--seconds" => {
                                let v = value(i)?;
                                r.3 = Some(v.parse().map_err(|_| format!("bad seconds {v:?}"))?);
                                i += 1;
                            }
                            "--name" => {
                                r.1 = value(i)?;
                                i += 1;
                            }
                            "--mask" | "--hitcount" => i += 1,
                            other => return Err(format!("unknown recent option {other}")),
                        }
                        i += 1;
                    }
                    (m, _) => {
                        // Unknown option: keep it (with its value if the next word is not an option).
                        let mut args = vec![opt.to_string()];
                        if let Some(next) = words.get(i + 1).filter(|n| !n.starts_with('-') && *n != "!") {
                            args.push(next.clone());
                            i += 1;
                        }
                        push(Cond::Other(m.to_string(), args), &mut negate);
                        i += 1;
                    }
                }
            }
            other => return Err(format!("unexpected word {other:?}")),
        }
    }
    flush_recent(&mut recent, &mut matches);
    Ok(ParsedRule { matches, target })
}

fn parse_target(name: &str, args: &[String]) -> Result<Target, String> {
    let arg = |flag: &str| args.iter().position(|a| a == flag).and_then(|p| args.get(p + 1)).map(String::as_str);
    Ok(match name {
        "ACCEPT" => Target::Accept,
        "DROP" => Target::Drop,
        "RETURN" => Target::Return,
        "REJECT" => Target::Reject,
        "DNAT" => {
            let to = arg("--to-destination").ok_or("DNAT without --to-destination")?;
            let (ip, port) = parse_dnat(to).ok_or_else(|| format!("bad DNAT destination {to:?}"))?;
            Target::Dnat { ip, port }
        }
        "MASQUERADE" => Target::Masquerade { random_fully: args.iter().any(|a| a == "--random-fully") },
        "MARK" => {
            let (value, mask) = if let Some(v) = arg("--set-xmark") {
                parse_value_mask(v, u32::MAX).ok_or_else(|| format!("bad mark {v:?}"))?
            } else if let Some(v) = arg("--or-mark") {
                let v = parse_u32(v).ok_or("bad mark")?;
                (v, v)
            } else if let Some(v) = arg("--xor-mark") {
                (parse_u32(v).ok_or("bad mark")?, 0)
            } else if let Some(v) = arg("--and-mark") {
                (0, !parse_u32(v).ok_or("bad mark")?)
            } else if let Some(v) = arg("--set-mark") {
                let (v, m) = parse_value_mask(v, u32::MAX).ok_or("bad mark")?;
                (v, v | m)
            } else {
                return Ok(Target::Other(name.into(), args.to_vec()));
            };
            Target::Mark { value, mask }
        }
        chain if !args.is_empty() => Target::Other(chain.into(), args.to_vec()),
        // Target extensions we do not model, used without options.
        "LOG" | "SNAT" | "CT" | "NOTRACK" | "TRACE" | "REDIRECT" | "CONNMARK" | "TPROXY" => {
            Target::Other(name.into(), Vec::new())
        }
        chain => Target::Jump(chain.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_quotes() {
        assert_eq!(
            tokenize(r#"-m comment --comment "a \"b\" c" -j X"#).unwrap(),
            ["-m", "comment", "--comment", "a \"b\" c", "-j", "X"]
        );
        assert_eq!(tokenize(r#"--comment "with \'single\'""#).unwrap(), ["--comment", "with 'single'"]);
        assert!(tokenize("\"open").is_err());
    }

    #[test]
    fn parses_what_save_prints() {
        let r = parse_rule("-d 10.96.0.10/32 -p tcp -m comment --comment \"ns/a%22b cluster IP\" -m tcp --dport 80 -m recent --update --seconds 10800 --reap --name SWITCHYARD-AFF-X --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.1.0.1:8080").unwrap();
        assert_eq!(r.comment(), Some("ns/a%22b cluster IP"));
        assert_eq!(r.target, Target::Dnat { ip: "10.1.0.1".parse().unwrap(), port: Some(8080) });
        assert!(r.matches.contains(&Match { negated: false, cond: Cond::DPort(80, 80) }));
        assert!(r.matches.contains(&Match {
            negated: false,
            cond: Cond::Recent { name: "SWITCHYARD-AFF-X".into(), op: RecentOp::Update, seconds: Some(10800) }
        }));
        let r = parse_rule("-m mark ! --mark 0x4000/0x4000 -j RETURN").unwrap();
        assert_eq!(r.matches, [Match { negated: true, cond: Cond::Mark { value: 0x4000, mask: 0x4000 } }]);
        let r = parse_rule("-j MARK --set-xmark 0x4000/0x0").unwrap();
        assert_eq!(r.target, Target::Mark { value: 0x4000, mask: 0 });
        let r =
            parse_rule("-m statistic --mode random --probability 0.33333333349 -j DNAT --to-destination [fd00::1]:80")
                .unwrap();
        assert_eq!(r.matches[0].cond, Cond::Statistic { probability: 715_827_883 });
        assert_eq!(r.target, Target::Dnat { ip: "fd00::1".parse().unwrap(), port: Some(80) });
        let r = parse_rule("! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")
            .unwrap();
        assert!(r.matches[0].negated && !r.matches[1].negated && r.matches[2].negated);
        assert_eq!(parse_rule("-j REJECT --reject-with icmp-port-unreachable").unwrap().target, Target::Reject);
        assert_eq!(parse_rule("-g SWITCHYARD-X").unwrap().target, Target::Goto("SWITCHYARD-X".into()));
    }

    #[test]
    fn parses_save_output() {
        let text = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:SWITCHYARD-A - [0:0]\n-A PREROUTING -j SWITCHYARD-A\n-A SWITCHYARD-A -j RETURN\nCOMMIT\n*security\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n";
        let rs = Ruleset::parse_save(text).unwrap();
        let nat = rs.table(Table::Nat).unwrap();
        assert_eq!(nat.rules("PREROUTING"), ["-j SWITCHYARD-A"]);
        assert_eq!(nat.chain("PREROUTING").unwrap().policy.as_deref(), Some("ACCEPT"));
        assert_eq!(nat.chain("SWITCHYARD-A").unwrap().policy, None);
        assert_eq!(rs.tables.len(), 1);
        assert_eq!(Ruleset::parse_save(&rs.render_save()).unwrap(), rs);
    }
}
