//! Writing `iptables-restore` input: tables, chains, rules, comments.
//!
//! This is the public rule writer (the IPVS backend uses it for its helper
//! rules). [`Rule`] renders in the canonical order `iptables-save` prints
//! (`-s`, `-d`, `-i`, `-o`, `-p`, then `-m` modules in the order added, then
//! the target), so a rule written here compares equal, as text, to the rule
//! the kernel gives back, and `-D` with it deletes exactly that rule.
//!
//! ```
//! use backend_iptables::restore::{RestorePayload, Rule, Table};
//! let mut payload = RestorePayload::new();
//! let nat = payload.table(Table::Nat);
//! nat.declare_chain("SWITCHYARD-EXAMPLE");
//! nat.append("SWITCHYARD-EXAMPLE", &Rule::new().protocol("tcp").comment("ns/web:http").dport("tcp", 80).jump("ACCEPT"));
//! assert_eq!(
//!     payload.render(),
//!     "*nat\n:SWITCHYARD-EXAMPLE - [0:0]\n-A SWITCHYARD-EXAMPLE -p tcp -m comment --comment \"ns/web:http\" -m tcp --dport 80 -j ACCEPT\nCOMMIT\n"
//! );
//! ```

use std::fmt::{self, Write as _};
use std::io;
use std::net::IpAddr;

use ipnet::IpNet;

/// An iptables table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Filter,
    Nat,
    Mangle,
    Raw,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Mangle => "mangle",
            Table::Raw => "raw",
        }
    }

    pub fn parse(s: &str) -> Option<Table> {
        match s {
            "filter" => Some(Table::Filter),
            "nat" => Some(Table::Nat),
            "mangle" => Some(Table::Mangle),
            "raw" => Some(Table::Raw),
            _ => None,
        }
    }

    /// The built-in chains of this table.
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            Table::Filter => &["INPUT", "FORWARD", "OUTPUT"],
            Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            Table::Mangle => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
            Table::Raw => &["PREROUTING", "OUTPUT"],
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Escapes untrusted text for a rule comment: everything outside
/// `[A-Za-z0-9 ._:/-]` is percent-encoded (so quotes, backslashes and
/// newlines from API objects can never end the comment or the rule), and the
/// result is cut to the kernel's 255-byte limit. [`unescape_comment`] reverses it.
pub fn escape_comment(text: &str) -> String {
    escape(text, true)
}

/// Like [`escape_comment`], but spaces are encoded too: for one word of a
/// comment that readers split on spaces (the Service in `<service> <kind>`).
pub fn escape_comment_word(text: &str) -> String {
    escape(text, false)
}

fn escape(text: &str, keep_spaces: bool) -> String {
    const MAX: usize = 255;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-') || (keep_spaces && c == ' ') {
            if out.len() + 1 > MAX {
                break;
            }
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            let bytes = c.encode_utf8(&mut buf).as_bytes();
            if out.len() + 3 * bytes.len() > MAX {
                break;
            }
            for b in bytes {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Reverses [`escape_comment`] (invalid sequences are kept as they are).
pub fn unescape_comment(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Quotes a value the way `iptables-save` does: bare when it is only
/// `[A-Za-z0-9_-]`, otherwise in double quotes with `"`, `\` and `'` escaped.
pub fn quote(value: &str) -> String {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// An address as iptables prints it: always with a prefix length.
pub fn net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// The `host:port` form DNAT uses (`[v6]:port` for IPv6).
pub fn socket(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// One rule (without the `-A CHAIN` part), built in iptables-save's canonical order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    source: Option<(bool, String)>,
    destination: Option<(bool, String)>,
    in_interface: Option<(bool, String)>,
    out_interface: Option<(bool, String)>,
    protocol: Option<(bool, String)>,
    matches: String,
    target: String,
}

impl Rule {
    pub fn new() -> Rule {
        Rule::default()
    }

    /// `-s NET`
    pub fn source(mut self, net: impl fmt::Display) -> Self {
        self.source = Some((false, net.to_string()));
        self
    }

    /// `! -s NET`
    pub fn not_source(mut self, net: impl fmt::Display) -> Self {
        self.source = Some((true, net.to_string()));
        self
    }

    /// `-d NET`
    pub fn destination(mut self, net: impl fmt::Display) -> Self {
        self.destination = Some((false, net.to_string()));
        self
    }

    /// `! -d NET`
    pub fn not_destination(mut self, net: impl fmt::Display) -> Self {
        self.destination = Some((true, net.to_string()));
        self
    }

    /// `-i IFACE`
    pub fn in_interface(mut self, iface: &str) -> Self {
        self.in_interface = Some((false, iface.to_string()));
        self
    }

    /// `-o IFACE`
    pub fn out_interface(mut self, iface: &str) -> Self {
        self.out_interface = Some((false, iface.to_string()));
        self
    }

    /// `-p PROTO` (`tcp`, `udp`, `sctp`, ...)
    pub fn protocol(mut self, proto: &str) -> Self {
        self.protocol = Some((false, proto.to_string()));
        self
    }

    /// `-m MODULE ARGS` (ARGS as iptables-save prints them, may be empty).
    pub fn matcher(mut self, module: &str, args: &str) -> Self {
        self.matches.push_str(" -m ");
        self.matches.push_str(module);
        if !args.is_empty() {
            self.matches.push(' ');
            self.matches.push_str(args);
        }
        self
    }

    /// `-m comment --comment TEXT`, escaped with [`escape_comment`].
    pub fn comment(self, text: &str) -> Self {
        self.comment_escaped(&escape_comment(text))
    }

    /// `-m comment --comment TEXT` for text already escaped with
    /// [`escape_comment`] / [`escape_comment_word`] (anything unsafe left in
    /// it is escaped again, so it can never break the rule).
    pub fn comment_escaped(self, text: &str) -> Self {
        let safe = if text.chars().all(|c| c.is_ascii_alphanumeric() || " ._:/-%".contains(c)) {
            text.to_string()
        } else {
            escape_comment(text)
        };
        let arg = format!("--comment {}", quote(&safe));
        self.matcher("comment", &arg)
    }

    /// `-m PROTO --dport PORT` (the protocol must also be set with [`Rule::protocol`]).
    pub fn dport(self, proto: &str, port: u16) -> Self {
        self.matcher(proto, &format!("--dport {port}"))
    }

    /// `-m PROTO --dport LO:HI`
    pub fn dport_range(self, proto: &str, lo: u16, hi: u16) -> Self {
        if lo == hi { self.dport(proto, lo) } else { self.matcher(proto, &format!("--dport {lo}:{hi}")) }
    }

    /// `-j TARGET`
    pub fn jump(mut self, target: &str) -> Self {
        self.target = format!(" -j {target}");
        self
    }

    /// `-j TARGET ARGS`
    pub fn jump_with(mut self, target: &str, args: &str) -> Self {
        self.target = format!(" -j {target} {args}");
        self
    }

    /// `-g CHAIN`
    pub fn goto(mut self, chain: &str) -> Self {
        self.target = format!(" -g {chain}");
        self
    }

    /// The rule text, e.g. `-d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j ACCEPT`.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 + self.matches.len() + self.target.len());
        let mut opt = |flag: &str, v: &Option<(bool, String)>| {
            if let Some((neg, value)) = v {
                if !out.is_empty() {
                    out.push(' ');
                }
                if *neg {
                    out.push_str("! ");
                }
                out.push_str(flag);
                out.push(' ');
                out.push_str(value);
            }
        };
        opt("-s", &self.source);
        opt("-d", &self.destination);
        opt("-i", &self.in_interface);
        opt("-o", &self.out_interface);
        opt("-p", &self.protocol);
        let rest = [self.matches.as_str(), self.target.as_str()];
        for part in rest {
            let part = if out.is_empty() { part.trim_start() } else { part };
            out.push_str(part);
        }
        out
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// The commands for one table in a restore payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSection {
    table: Table,
    declared: Vec<String>,
    commands: String,
    deleted: Vec<String>,
}

impl TableSection {
    fn new(table: Table) -> Self {
        TableSection { table, declared: Vec::new(), commands: String::new(), deleted: Vec::new() }
    }

    pub fn table(&self) -> Table {
        self.table
    }

    /// `:CHAIN - [0:0]`: creates the chain, or flushes it if it exists
    /// (with `--noflush`, only declared chains are flushed).
    pub fn declare_chain(&mut self, chain: &str) {
        self.declared.push(chain.to_string());
    }

    /// `-A CHAIN RULE`
    pub fn append(&mut self, chain: &str, rule: &Rule) {
        self.append_text(chain, &rule.render());
    }

    /// `-A CHAIN RULE`, with rule text already rendered (for example by [`Rule::render`]).
    pub fn append_text(&mut self, chain: &str, rule: &str) {
        self.command("-A", chain, None, rule);
    }

    /// `-I CHAIN [POSITION] RULE`; position 1 is the top.
    pub fn insert(&mut self, chain: &str, position: Option<u32>, rule: &Rule) {
        self.insert_text(chain, position, &rule.render());
    }

    /// `-I CHAIN [POSITION] RULE` with rendered rule text.
    pub fn insert_text(&mut self, chain: &str, position: Option<u32>, rule: &str) {
        self.command("-I", chain, position, rule);
    }

    /// `-D CHAIN RULE`: deletes the first rule equal to RULE; the whole
    /// table's transaction fails if there is none.
    pub fn delete(&mut self, chain: &str, rule: &Rule) {
        self.delete_text(chain, &rule.render());
    }

    /// `-D CHAIN RULE` with rendered rule text (as `iptables-save` printed it).
    pub fn delete_text(&mut self, chain: &str, rule: &str) {
        self.command("-D", chain, None, rule);
    }

    /// Deletes a chain: it is declared (flushed) first and `-X`ed after every
    /// other command of the table, so rules written in the same payload
    /// that used to jump to it have already been replaced.
    pub fn delete_chain(&mut self, chain: &str) {
        self.declared.push(chain.to_string());
        self.deleted.push(chain.to_string());
    }

    fn command(&mut self, op: &str, chain: &str, position: Option<u32>, rule: &str) {
        let c = &mut self.commands;
        c.push_str(op);
        c.push(' ');
        c.push_str(chain);
        if let Some(p) = position {
            let _ = write!(c, " {p}");
        }
        if !rule.is_empty() {
            c.push(' ');
            c.push_str(rule);
        }
        c.push('\n');
    }

    /// Whether this section changes nothing.
    pub fn is_empty(&self) -> bool {
        self.declared.is_empty() && self.commands.is_empty() && self.deleted.is_empty()
    }

    /// Lines of `-A`/`-I`/`-D` commands.
    pub fn command_count(&self) -> usize {
        self.commands.lines().count()
    }

    pub fn render_into(&self, out: &mut String) {
        let mut buf = Vec::with_capacity(self.commands.len() + 32 * self.declared.len() + 64);
        // Writing into a Vec cannot fail, and everything written is UTF-8.
        let _ = self.write_to(&mut buf);
        out.push_str(&String::from_utf8_lossy(&buf));
    }

    /// Writes only the `-A`/`-I`/`-D` lines, as added.
    pub fn write_commands(&self, out: &mut dyn io::Write) -> io::Result<()> {
        out.write_all(self.commands.as_bytes())
    }

    /// Writes this section as `iptables-restore` input.
    pub fn write_to(&self, out: &mut dyn io::Write) -> io::Result<()> {
        writeln!(out, "*{}", self.table.as_str())?;
        for c in &self.declared {
            writeln!(out, ":{c} - [0:0]")?;
        }
        self.write_commands(out)?;
        for c in &self.deleted {
            writeln!(out, "-X {c}")?;
        }
        out.write_all(b"COMMIT\n")
    }
}

/// Something that can be fed to `iptables-restore`: written straight into
/// the program's stdin ([`crate::Executor::restore_from`]), so that a
/// payload of tens of megabytes (a full sync at 10,000 Services) is never
/// held as one `String` next to the data it is made from.
pub trait RestoreInput {
    /// Writes the whole input.
    fn write_to(&self, out: &mut dyn io::Write) -> io::Result<()>;

    /// The input as text (tests, fakes, error messages).
    fn to_text(&self) -> String {
        let mut buf = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = self.write_to(&mut buf);
        String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Input for one `iptables-restore --noflush` run: one section per table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestorePayload {
    sections: Vec<TableSection>,
}

impl RestorePayload {
    pub fn new() -> Self {
        RestorePayload::default()
    }

    /// The section of a table, created on first use (sections keep first-use order).
    pub fn table(&mut self, table: Table) -> &mut TableSection {
        let idx = match self.sections.iter().position(|s| s.table == table) {
            Some(i) => i,
            None => {
                self.sections.push(TableSection::new(table));
                self.sections.len() - 1
            }
        };
        &mut self.sections[idx]
    }

    pub fn sections(&self) -> &[TableSection] {
        &self.sections
    }

    /// Whether no section changes anything.
    pub fn is_empty(&self) -> bool {
        self.sections.iter().all(TableSection::is_empty)
    }

    /// The text to feed to `iptables-restore --noflush` (empty sections are left out).
    pub fn render(&self) -> String {
        self.to_text()
    }
}

impl RestoreInput for RestorePayload {
    fn write_to(&self, out: &mut dyn io::Write) -> io::Result<()> {
        for s in self.sections.iter().filter(|s| !s.is_empty()) {
            s.write_to(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_order() {
        let r = Rule::new()
            .jump("SWITCHYARD-X")
            .dport("tcp", 80)
            .protocol("tcp")
            .destination("10.96.0.10/32")
            .not_source("10.244.0.0/16");
        assert_eq!(r.render(), "! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SWITCHYARD-X");
        assert_eq!(Rule::new().jump("RETURN").render(), "-j RETURN");
        assert_eq!(
            Rule::new().matcher("mark", "! --mark 0x4000/0x4000").jump("RETURN").render(),
            "-m mark ! --mark 0x4000/0x4000 -j RETURN"
        );
    }

    #[test]
    fn comments_cannot_break_out() {
        let evil = "ns/x\" -j ACCEPT\n-A INPUT -j DROP #'\\";
        let escaped = escape_comment(evil);
        assert!(!escaped.contains(['"', '\n', '\'', '\\']), "{escaped}");
        assert_eq!(unescape_comment(&escaped), evil);
        let r = Rule::new().comment(evil).jump("RETURN").render();
        assert_eq!(r.matches('"').count(), 2);
        assert!(!r.contains('\n'));
        // Non-ASCII round-trips; long text is cut to the kernel's limit.
        assert_eq!(unescape_comment(&escape_comment("café")), "café");
        assert!(escape_comment(&"é".repeat(300)).len() <= 255);
        assert_eq!(quote("simple-1_x"), "simple-1_x");
        assert_eq!(quote("ns/svc port"), "\"ns/svc port\"");
    }

    #[test]
    fn payload_layout() {
        let mut p = RestorePayload::new();
        p.table(Table::Nat).declare_chain("SWITCHYARD-A");
        p.table(Table::Nat).delete_chain("SWITCHYARD-OLD");
        p.table(Table::Nat).append("SWITCHYARD-A", &Rule::new().jump("RETURN"));
        p.table(Table::Nat).insert("PREROUTING", Some(1), &Rule::new().jump("SWITCHYARD-A"));
        p.table(Table::Filter);
        assert_eq!(
            p.render(),
            "*nat\n:SWITCHYARD-A - [0:0]\n:SWITCHYARD-OLD - [0:0]\n-A SWITCHYARD-A -j RETURN\n-I PREROUTING 1 -j SWITCHYARD-A\n-X SWITCHYARD-OLD\nCOMMIT\n"
        );
    }
}
