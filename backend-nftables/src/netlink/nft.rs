//! nf_tables messages: batches, tables, chains, rules with their
//! expressions, sets and set elements (`include/uapi/linux/netfilter/nf_tables.h`).
//!
//! Each builder names the `nft` command it is equivalent to.

use super::wire::{self, Writer};

/// `NFNL_SUBSYS_NFTABLES`.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` / `_END` (`NLMSG_MIN_TYPE` and the next).
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `NFNLGRP_NFTABLES`: the multicast group of nf_tables change events.
pub const NFNLGRP_NFTABLES: u32 = 7;

/// `NFPROTO_IPV4` / `NFPROTO_IPV6`.
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

pub mod msg {
    pub const NEWTABLE: u8 = 0;
    pub const GETTABLE: u8 = 1;
    pub const DELTABLE: u8 = 2;
    pub const NEWCHAIN: u8 = 3;
    pub const GETCHAIN: u8 = 4;
    pub const DELCHAIN: u8 = 5;
    pub const NEWRULE: u8 = 6;
    pub const GETRULE: u8 = 7;
    pub const DELRULE: u8 = 8;
    pub const NEWSET: u8 = 9;
    pub const GETSET: u8 = 10;
    pub const DELSET: u8 = 11;
    pub const NEWSETELEM: u8 = 12;
    pub const GETSETELEM: u8 = 13;
    pub const DELSETELEM: u8 = 14;
    pub const NEWGEN: u8 = 15;
    pub const GETGEN: u8 = 16;
}

/// The netlink message type of an nf_tables message.
pub fn msg_type(m: u8) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | m as u16
}

/// The nf_tables message kind of a netlink message type, if it is one.
pub fn nft_msg(t: u16) -> Option<u8> {
    (t >> 8 == NFNL_SUBSYS_NFTABLES).then_some((t & 0xff) as u8)
}

pub mod attr {
    pub const TABLE_NAME: u16 = 1;
    pub const TABLE_FLAGS: u16 = 2;

    pub const CHAIN_TABLE: u16 = 1;
    pub const CHAIN_NAME: u16 = 3;
    pub const CHAIN_HOOK: u16 = 4;
    pub const CHAIN_POLICY: u16 = 5;
    pub const CHAIN_TYPE: u16 = 7;
    pub const HOOK_HOOKNUM: u16 = 1;
    pub const HOOK_PRIORITY: u16 = 2;

    pub const RULE_TABLE: u16 = 1;
    pub const RULE_CHAIN: u16 = 2;
    pub const RULE_HANDLE: u16 = 3;
    pub const RULE_EXPRESSIONS: u16 = 4;
    pub const RULE_USERDATA: u16 = 7;

    pub const LIST_ELEM: u16 = 1;
    pub const EXPR_NAME: u16 = 1;
    pub const EXPR_DATA: u16 = 2;

    pub const DATA_VALUE: u16 = 1;
    pub const DATA_VERDICT: u16 = 2;
    pub const VERDICT_CODE: u16 = 1;
    pub const VERDICT_CHAIN: u16 = 2;

    pub const SET_TABLE: u16 = 1;
    pub const SET_NAME: u16 = 2;
    pub const SET_FLAGS: u16 = 3;
    pub const SET_KEY_TYPE: u16 = 4;
    pub const SET_KEY_LEN: u16 = 5;
    pub const SET_DATA_TYPE: u16 = 6;
    pub const SET_DATA_LEN: u16 = 7;
    pub const SET_POLICY: u16 = 8;
    pub const SET_DESC: u16 = 9;
    pub const SET_ID: u16 = 10;
    pub const SET_TIMEOUT: u16 = 11;
    pub const SET_USERDATA: u16 = 13;
    pub const SET_DESC_SIZE: u16 = 1;
    pub const SET_DESC_CONCAT: u16 = 2;
    pub const SET_FIELD_LEN: u16 = 1;

    pub const SET_ELEM_LIST_TABLE: u16 = 1;
    pub const SET_ELEM_LIST_SET: u16 = 2;
    pub const SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const SET_ELEM_KEY: u16 = 1;
    pub const SET_ELEM_DATA: u16 = 2;
    pub const SET_ELEM_TIMEOUT: u16 = 4;
    pub const SET_ELEM_USERDATA: u16 = 6;

    pub const GEN_ID: u16 = 1;
    pub const GEN_PROC_PID: u16 = 2;
    pub const GEN_PROC_NAME: u16 = 3;
}

/// Set flags (`NFT_SET_*`).
pub mod set_flags {
    pub const CONSTANT: u32 = 0x2;
    pub const INTERVAL: u32 = 0x4;
    pub const MAP: u32 = 0x8;
    pub const TIMEOUT: u32 = 0x10;
    /// Updated from the packet path (`dynset`).
    pub const EVAL: u32 = 0x20;
    /// The key is a concatenation described by `NFTA_SET_DESC_CONCAT`.
    pub const CONCAT: u32 = 0x80;
}

/// `NFT_DATA_VERDICT`: the data type of a verdict map.
pub const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

/// Netfilter hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookNum {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

/// Verdicts (`NF_DROP`, `NF_ACCEPT`, `NFT_JUMP`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Drop,
    Accept,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Return => -5,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
        }
    }

    fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }

    /// Reads `NFTA_DATA_VERDICT`'s content back.
    pub fn parse(attrs: wire::Attrs<'_>) -> Option<Verdict> {
        let code = attrs.get(attr::VERDICT_CODE)?.be32()? as i32;
        let chain = || attrs.get(attr::VERDICT_CHAIN).and_then(|a| a.str()).map(str::to_string);
        Some(match code {
            0 => Verdict::Drop,
            1 => Verdict::Accept,
            -5 => Verdict::Return,
            -3 => Verdict::Jump(chain()?),
            -4 => Verdict::Goto(chain()?),
            _ => return None,
        })
    }
}

/// `NFT_REG32_00 + n`: the 32-bit registers (16 of them, 8 to 23).
pub const fn reg(n: u32) -> u32 {
    8 + n
}

/// Where `payload` reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadBase {
    Network = 1,
    Transport = 2,
}

/// `NFT_CMP_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// `NFT_META_*` keys we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKey {
    Mark = 3,
    L4Proto = 16,
}

/// `NFT_CT_*` keys we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtKey {
    State = 0,
    Status = 2,
    /// The original direction's destination port (`ct original proto-dst`).
    ProtoDst = 12,
    /// The original direction's addresses (`ct original ip saddr` …), Linux ≥ 4.17.
    SrcIp = 19,
    DstIp = 20,
    SrcIp6 = 21,
    DstIp6 = 22,
}

impl CtKey {
    /// Keys of one direction of the flow need `NFTA_CT_DIRECTION`.
    fn directional(self) -> bool {
        !matches!(self, CtKey::State | CtKey::Status)
    }
}

/// `ct state new` bit (`NF_CT_STATE_BIT(IP_CT_NEW)`).
pub const CT_STATE_NEW: u32 = 1 << 3;
/// `ct status dnat` bit (`IPS_DST_NAT`).
pub const CT_STATUS_DNAT: u32 = 1 << 5;
/// `RTN_LOCAL`, the `fib ... type local` result.
pub const RTN_LOCAL: u32 = 2;
/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
pub const NAT_RANDOM_FULLY: u32 = 0x10;

/// One expression of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `payload load <len>b @ <base> + <offset> => reg`
    Payload { dreg: u32, base: PayloadBase, offset: u32, len: u32 },
    /// `cmp <op> reg <data>`
    Cmp { sreg: u32, op: CmpOp, data: Vec<u8> },
    /// `bitwise reg = (reg & mask) ^ xor`
    Bitwise { sreg: u32, dreg: u32, mask: Vec<u8>, xor: Vec<u8> },
    /// `immediate reg <data>`
    Immediate { dreg: u32, data: Vec<u8> },
    /// `immediate verdict`
    Verdict(Verdict),
    /// `lookup reg @set [=> dreg]` (dreg 0: the verdict of a verdict map).
    Lookup { set: String, sreg: u32, dreg: Option<u32>, invert: bool },
    /// `meta load key => reg`
    MetaGet { dreg: u32, key: MetaKey },
    /// `meta set key with reg`
    MetaSet { sreg: u32, key: MetaKey },
    /// `ct load key => reg`
    Ct { dreg: u32, key: CtKey },
    /// `numgen reg = random mod N`
    NumgenRandom { dreg: u32, modulus: u32 },
    /// `fib saddr|daddr type => reg`
    FibAddrType { dreg: u32, daddr: bool },
    /// `nat dnat <family> addr reg proto reg`
    Dnat { family: u8, addr: u32, proto: u32 },
    /// `masq [fully-random]`
    Masq { random_fully: bool },
    /// `reject type icmp code N` / `reject type tcp reset`
    Reject { tcp_reset: bool, icmp_code: u8 },
    /// `dynset update reg_key [: reg_data] timeout T @set`
    DynsetUpdate { set: String, sreg_key: u32, sreg_data: Option<u32>, timeout_ms: u64 },
    /// `counter`
    Counter,
}

impl Expr {
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Lookup { .. } => "lookup",
            Expr::MetaGet { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::NumgenRandom { .. } => "numgen",
            Expr::FibAddrType { .. } => "fib",
            Expr::Dnat { .. } => "nat",
            Expr::Masq { .. } => "masq",
            Expr::Reject { .. } => "reject",
            Expr::DynsetUpdate { .. } => "dynset",
            Expr::Counter => "counter",
        }
    }

    fn encode(&self, w: &mut Writer) {
        match self {
            Expr::Payload { dreg, base, offset, len } => {
                w.attr_be32(1, *dreg); // NFTA_PAYLOAD_DREG
                w.attr_be32(2, *base as u32); // BASE
                w.attr_be32(3, *offset); // OFFSET
                w.attr_be32(4, *len); // LEN
            }
            Expr::Cmp { sreg, op, data } => {
                w.attr_be32(1, *sreg); // NFTA_CMP_SREG
                w.attr_be32(2, *op as u32); // OP
                value(w, 3, data); // DATA
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                w.attr_be32(1, *sreg); // NFTA_BITWISE_SREG
                w.attr_be32(2, *dreg); // DREG
                w.attr_be32(3, mask.len() as u32); // LEN
                value(w, 4, mask); // MASK
                value(w, 5, xor); // XOR
            }
            Expr::Immediate { dreg, data } => {
                w.attr_be32(1, *dreg); // NFTA_IMMEDIATE_DREG
                value(w, 2, data); // DATA
            }
            Expr::Verdict(v) => {
                w.attr_be32(1, 0); // NFT_REG_VERDICT
                let d = w.nest(2);
                verdict(w, v);
                w.nest_end(d);
            }
            Expr::Lookup { set, sreg, dreg, invert } => {
                w.attr_str(1, set); // NFTA_LOOKUP_SET
                w.attr_be32(2, *sreg); // SREG
                if let Some(d) = dreg {
                    w.attr_be32(3, *d); // DREG
                }
                if *invert {
                    w.attr_be32(5, 1); // FLAGS: NFT_LOOKUP_F_INV
                }
            }
            Expr::MetaGet { dreg, key } => {
                w.attr_be32(1, *dreg); // NFTA_META_DREG
                w.attr_be32(2, *key as u32); // KEY
            }
            Expr::MetaSet { sreg, key } => {
                w.attr_be32(2, *key as u32); // NFTA_META_KEY
                w.attr_be32(3, *sreg); // SREG
            }
            Expr::Ct { dreg, key } => {
                w.attr_be32(1, *dreg); // NFTA_CT_DREG
                w.attr_be32(2, *key as u32); // KEY
                if key.directional() {
                    w.attr(3, &[0]); // NFTA_CT_DIRECTION: IP_CT_DIR_ORIGINAL
                }
            }
            Expr::NumgenRandom { dreg, modulus } => {
                w.attr_be32(1, *dreg); // NFTA_NG_DREG
                w.attr_be32(2, *modulus); // MODULUS
                w.attr_be32(3, 1); // TYPE: NFT_NG_RANDOM
            }
            Expr::FibAddrType { dreg, daddr } => {
                w.attr_be32(1, *dreg); // NFTA_FIB_DREG
                w.attr_be32(2, 3); // RESULT: NFT_FIB_RESULT_ADDRTYPE
                w.attr_be32(3, if *daddr { 2 } else { 1 }); // FLAGS: NFTA_FIB_F_DADDR / SADDR
            }
            Expr::Dnat { family, addr, proto } => {
                w.attr_be32(1, 1); // NFTA_NAT_TYPE: NFT_NAT_DNAT
                w.attr_be32(2, *family as u32); // FAMILY
                w.attr_be32(3, *addr); // REG_ADDR_MIN
                w.attr_be32(5, *proto); // REG_PROTO_MIN
            }
            Expr::Masq { random_fully } => {
                if *random_fully {
                    w.attr_be32(1, NAT_RANDOM_FULLY); // NFTA_MASQ_FLAGS
                }
            }
            Expr::Reject { tcp_reset, icmp_code } => {
                if *tcp_reset {
                    w.attr_be32(1, 1); // NFTA_REJECT_TYPE: NFT_REJECT_TCP_RST
                } else {
                    w.attr_be32(1, 0); // NFT_REJECT_ICMP_UNREACH
                    w.attr(2, &[*icmp_code]); // ICMP_CODE
                }
            }
            Expr::DynsetUpdate { set, sreg_key, sreg_data, timeout_ms } => {
                w.attr_str(1, set); // NFTA_DYNSET_SET_NAME
                w.attr_be32(3, 1); // OP: NFT_DYNSET_OP_UPDATE
                w.attr_be32(4, *sreg_key); // SREG_KEY
                if let Some(d) = sreg_data {
                    w.attr_be32(5, *d); // SREG_DATA
                }
                w.attr_be64(6, *timeout_ms); // TIMEOUT
            }
            Expr::Counter => {
                w.attr_be64(1, 0); // NFTA_COUNTER_BYTES
                w.attr_be64(2, 0); // PACKETS
            }
        }
    }
}

fn value(w: &mut Writer, kind: u16, data: &[u8]) {
    let n = w.nest(kind);
    w.attr(attr::DATA_VALUE, data);
    w.nest_end(n);
}

fn verdict(w: &mut Writer, v: &Verdict) {
    let n = w.nest(attr::DATA_VERDICT);
    w.attr_be32(attr::VERDICT_CODE, v.code() as u32);
    if let Some(c) = v.chain() {
        w.attr_str(attr::VERDICT_CHAIN, c);
    }
    w.nest_end(n);
}

/// A base chain's hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    pub num: HookNum,
    pub priority: i32,
    /// `filter` or `nat`.
    pub kind: &'static str,
}

/// A set or map declaration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub flags: u32,
    /// nft's datatype of the key (see [`concat`]): only for the `nft` CLI,
    /// which must be able to print the table (it asserts on a lookup whose
    /// key spans registers unless the set's type is a concatenation).
    pub key_type: u32,
    pub key_len: u32,
    /// `None` for a set, `Some(NFT_DATA_VERDICT)` for a verdict map, else
    /// the data length of a map with [`TYPE_INTEGER`] data.
    pub data: Option<SetData>,
    /// Default element timeout (sets with [`set_flags::TIMEOUT`]).
    pub timeout_ms: Option<u64>,
    /// The expected number of elements (`NFTA_SET_DESC_SIZE`, `size` in nft).
    pub size: Option<u32>,
    /// The byte length of each part of a concatenated key
    /// (`NFTA_SET_DESC_CONCAT`; empty: not described).
    pub fields: Vec<u32>,
    /// nft's set userdata (`NFTA_SET_USERDATA`): how the CLI prints and
    /// parses the key and data.
    pub userdata: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetData {
    Verdict,
    /// Data of (nft datatype, length).
    Value(u32, u32),
}

/// nft's datatypes (`enum datatypes` in nftables' datatype.h).
pub mod types {
    pub const IPADDR: u32 = 7;
    pub const IP6ADDR: u32 = 8;
    pub const INET_PROTOCOL: u32 = 12;
    pub const INET_SERVICE: u32 = 13;
    pub const MARK: u32 = 19;
}

/// nft's id of a concatenation of datatypes: 6 bits per part, first part highest.
pub fn concat(parts: &[u32]) -> u32 {
    parts.iter().fold(0, |acc, t| (acc << 6) | t)
}

/// What a set element maps to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElemData {
    None,
    Value(Vec<u8>),
    Verdict(Verdict),
}

/// One set element.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Elem {
    pub key: Vec<u8>,
    pub data: ElemData,
    /// Free-form bytes the kernel keeps with the element (we store the
    /// frontend's kind and Service port there for `inspect`).
    pub userdata: Option<Vec<u8>>,
}

/// Elements per message: the element list is one attribute, whose length
/// is 16 bits; stay well under it.
const ELEMENTS_BYTES: usize = 48 * 1024;

/// A transaction: `NFNL_MSG_BATCH_BEGIN`, nf_tables messages, `_END`.
/// The kernel applies all of it or nothing (what `nft -f` sends).
#[derive(Debug)]
pub struct Batch {
    w: Writer,
    family: u8,
    /// Sequence number of the last message that asks for an acknowledgement.
    last: Option<u32>,
    messages: usize,
    /// What each message is, by sequence number (for error messages).
    what: Vec<(u32, String)>,
}

impl Batch {
    pub fn new(family: u8, seq: u32) -> Self {
        let mut w = Writer::new(seq);
        w.begin(NFNL_MSG_BATCH_BEGIN, wire::NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        w.end();
        Batch { w, family, last: None, messages: 0, what: Vec::new() }
    }

    /// Number of nf_tables messages so far.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// What the message with sequence number `seq` was.
    pub fn describe(&self, seq: u32) -> String {
        match self.what.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) => self.what[i].1.clone(),
            Err(_) => format!("message {seq}"),
        }
    }

    /// The descriptions, for [`Batch::describe`] after [`Batch::finish`].
    pub fn descriptions(&self) -> Vec<(u32, String)> {
        self.what.clone()
    }

    fn begin(&mut self, m: u8, flags: u16, what: String) -> u32 {
        self.messages += 1;
        // Every message asks for an ACK: the kernel answers each, so the
        // reader knows exactly which message an error belongs to.
        let seq = self.w.begin(msg_type(m), wire::NLM_F_REQUEST | wire::NLM_F_ACK | flags, self.family, 0);
        self.last = Some(seq);
        self.what.push((seq, what));
        seq
    }

    /// `nft add table <family> <name>`
    pub fn add_table(&mut self, name: &str) {
        self.begin(msg::NEWTABLE, wire::NLM_F_CREATE, format!("add table {name}"));
        self.w.attr_str(attr::TABLE_NAME, name);
        self.w.attr_be32(attr::TABLE_FLAGS, 0);
        self.w.end();
    }

    /// `nft delete table <family> <name>`
    pub fn del_table(&mut self, name: &str) {
        self.begin(msg::DELTABLE, 0, format!("delete table {name}"));
        self.w.attr_str(attr::TABLE_NAME, name);
        self.w.end();
    }

    /// `nft add chain <family> <table> <name> [{ type .. hook .. priority ..; }]`
    pub fn add_chain(&mut self, table: &str, name: &str, hook: Option<Hook>) {
        self.begin(msg::NEWCHAIN, wire::NLM_F_CREATE, format!("add chain {name}"));
        self.w.attr_str(attr::CHAIN_TABLE, table);
        self.w.attr_str(attr::CHAIN_NAME, name);
        if let Some(h) = hook {
            let n = self.w.nest(attr::CHAIN_HOOK);
            self.w.attr_be32(attr::HOOK_HOOKNUM, h.num as u32);
            self.w.attr_be32(attr::HOOK_PRIORITY, h.priority as u32);
            self.w.nest_end(n);
            self.w.attr_be32(attr::CHAIN_POLICY, 1); // NF_ACCEPT
            self.w.attr_str(attr::CHAIN_TYPE, h.kind);
        }
        self.w.end();
    }

    /// `nft flush chain <family> <table> <name>` (a DELRULE without a handle).
    pub fn flush_chain(&mut self, table: &str, name: &str) {
        self.begin(msg::DELRULE, 0, format!("flush chain {name}"));
        self.w.attr_str(attr::RULE_TABLE, table);
        self.w.attr_str(attr::RULE_CHAIN, name);
        self.w.end();
    }

    /// `nft delete chain <family> <table> <name>` (must be empty and unreferenced).
    pub fn del_chain(&mut self, table: &str, name: &str) {
        self.begin(msg::DELCHAIN, 0, format!("delete chain {name}"));
        self.w.attr_str(attr::CHAIN_TABLE, table);
        self.w.attr_str(attr::CHAIN_NAME, name);
        self.w.end();
    }

    /// `nft add rule <family> <table> <chain> <exprs> [comment ..]`
    pub fn add_rule(&mut self, table: &str, chain: &str, exprs: &[Expr], comment: Option<&str>) {
        let names: Vec<&str> = exprs.iter().map(Expr::name).collect();
        self.begin(
            msg::NEWRULE,
            wire::NLM_F_CREATE | wire::NLM_F_APPEND,
            format!("add rule to chain {chain}: {}", names.join(" ")),
        );
        self.w.attr_str(attr::RULE_TABLE, table);
        self.w.attr_str(attr::RULE_CHAIN, chain);
        let list = self.w.nest(attr::RULE_EXPRESSIONS);
        for e in exprs {
            let el = self.w.nest(attr::LIST_ELEM);
            self.w.attr_str(attr::EXPR_NAME, e.name());
            let d = self.w.nest(attr::EXPR_DATA);
            e.encode(&mut self.w);
            self.w.nest_end(d);
            self.w.nest_end(el);
        }
        self.w.nest_end(list);
        if let Some(c) = comment {
            // nft's userdata TLV: NFTNL_UDATA_RULE_COMMENT (0), length, text with NUL.
            let mut ud = vec![0u8, (c.len() + 1).min(255) as u8];
            ud.extend_from_slice(&c.as_bytes()[..c.len().min(254)]);
            ud.push(0);
            self.w.attr(attr::RULE_USERDATA, &ud);
        }
        self.w.end();
    }

    /// `nft add set|map <family> <table> <name> { ... }`
    pub fn add_set(&mut self, table: &str, spec: &SetSpec, id: u32) {
        self.begin(msg::NEWSET, wire::NLM_F_CREATE, format!("add set {}", spec.name));
        self.w.attr_str(attr::SET_TABLE, table);
        self.w.attr_str(attr::SET_NAME, &spec.name);
        let mut flags = spec.flags;
        if spec.data.is_some() {
            flags |= set_flags::MAP;
        }
        self.w.attr_be32(attr::SET_FLAGS, flags);
        self.w.attr_be32(attr::SET_KEY_TYPE, spec.key_type);
        self.w.attr_be32(attr::SET_KEY_LEN, spec.key_len);
        match spec.data {
            Some(SetData::Verdict) => {
                self.w.attr_be32(attr::SET_DATA_TYPE, NFT_DATA_VERDICT);
                self.w.attr_be32(attr::SET_DATA_LEN, 16);
            }
            Some(SetData::Value(t, len)) => {
                self.w.attr_be32(attr::SET_DATA_TYPE, t);
                self.w.attr_be32(attr::SET_DATA_LEN, len);
            }
            None => {}
        }
        self.w.attr_be32(attr::SET_ID, id);
        if let Some(t) = spec.timeout_ms {
            self.w.attr_be64(attr::SET_TIMEOUT, t);
        }
        if spec.size.is_some() || !spec.fields.is_empty() {
            let desc = self.w.nest(attr::SET_DESC);
            if let Some(n) = spec.size {
                self.w.attr_be32(attr::SET_DESC_SIZE, n);
            }
            if !spec.fields.is_empty() {
                let list = self.w.nest(attr::SET_DESC_CONCAT);
                for len in &spec.fields {
                    let el = self.w.nest(attr::LIST_ELEM);
                    self.w.attr_be32(attr::SET_FIELD_LEN, *len);
                    self.w.nest_end(el);
                }
                self.w.nest_end(list);
            }
            self.w.nest_end(desc);
        }
        if let Some(u) = &spec.userdata {
            self.w.attr(attr::SET_USERDATA, u);
        }
        self.w.end();
    }

    /// `nft add element` (`delete`: `nft delete element`) for many
    /// elements, split over as many messages as their size needs.
    pub fn elements(&mut self, table: &str, set: &str, elems: &[&Elem], delete: bool) {
        let mut i = 0;
        while i < elems.len() {
            let (m, flags) = if delete { (msg::DELSETELEM, 0) } else { (msg::NEWSETELEM, wire::NLM_F_CREATE) };
            let verb = if delete { "delete" } else { "add" };
            self.begin(m, flags, format!("{verb} elements of set {set}"));
            self.w.attr_str(attr::SET_ELEM_LIST_TABLE, table);
            self.w.attr_str(attr::SET_ELEM_LIST_SET, set);
            let list = self.w.nest(attr::SET_ELEM_LIST_ELEMENTS);
            while i < elems.len() && self.w.since(list) < ELEMENTS_BYTES {
                encode_elem(&mut self.w, elems[i], delete);
                i += 1;
            }
            self.w.nest_end(list);
            self.w.end();
        }
    }

    /// Closes the batch; returns its bytes and the sequence number of the
    /// last nf_tables message (`None`: an empty batch, nothing to send).
    pub fn finish(mut self) -> (Vec<u8>, Option<u32>) {
        self.w.begin(NFNL_MSG_BATCH_END, wire::NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.w.end();
        (self.w.into_bytes(), self.last)
    }
}

fn encode_elem(w: &mut Writer, e: &Elem, delete: bool) {
    let el = w.nest(attr::LIST_ELEM);
    value(w, attr::SET_ELEM_KEY, &e.key);
    if !delete {
        match &e.data {
            ElemData::None => {}
            ElemData::Value(v) => value(w, attr::SET_ELEM_DATA, v),
            ElemData::Verdict(v) => {
                let d = w.nest(attr::SET_ELEM_DATA);
                verdict(w, v);
                w.nest_end(d);
            }
        }
        if let Some(u) = &e.userdata {
            w.attr(attr::SET_ELEM_USERDATA, u);
        }
    }
    w.nest_end(el);
}

/// A dump request (`NLM_F_DUMP`): `GETSETELEM` of one set, `GETCHAIN` /
/// `GETRULE` / `GETSET` of one table (`nft list set|chain|table ...`).
pub fn dump_request(m: u8, family: u8, table: &str, set: Option<&str>, seq: u32) -> Vec<u8> {
    let mut w = Writer::new(seq);
    w.begin(msg_type(m), wire::NLM_F_REQUEST | wire::NLM_F_DUMP, family, 0);
    // TABLE is attribute 1 in every one of these messages.
    w.attr_str(1, table);
    if let Some(s) = set {
        w.attr_str(attr::SET_ELEM_LIST_SET, s);
    }
    w.end();
    w.into_bytes()
}

/// `GETTABLE` of one table (not a dump): ENOENT when it does not exist.
pub fn get_table_request(family: u8, table: &str, seq: u32) -> Vec<u8> {
    let mut w = Writer::new(seq);
    // No ACK: the reply (or an error) is the answer; an ACK left unread
    // would be taken for the end of the next dump.
    w.begin(msg_type(msg::GETTABLE), wire::NLM_F_REQUEST, family, 0);
    w.attr_str(attr::TABLE_NAME, table);
    w.end();
    w.into_bytes()
}

/// `GETGEN`: the ruleset generation (what nft sends before each command).
pub fn getgen_request(seq: u32) -> Vec<u8> {
    let mut w = Writer::new(seq);
    w.begin(msg_type(msg::GETGEN), wire::NLM_F_REQUEST, 0, 0);
    w.end();
    w.into_bytes()
}

/// A set element read back from a `NEWSETELEM` message (a dump reply or an event).
pub fn parse_elements(m: &wire::Message<'_>) -> Vec<Elem> {
    let mut out = Vec::new();
    let Some(list) = m.attrs().get(attr::SET_ELEM_LIST_ELEMENTS) else {
        return out;
    };
    for el in list.nested().filter(|a| a.kind == attr::LIST_ELEM) {
        let a = el.nested();
        let Some(key) = a.get(attr::SET_ELEM_KEY).and_then(|k| k.nested().get(attr::DATA_VALUE)) else {
            continue;
        };
        let data = match a.get(attr::SET_ELEM_DATA) {
            None => ElemData::None,
            Some(d) => {
                let d = d.nested();
                if let Some(v) = d.get(attr::DATA_VALUE) {
                    ElemData::Value(v.payload.to_vec())
                } else if let Some(v) = d.get(attr::DATA_VERDICT).and_then(|v| Verdict::parse(v.nested())) {
                    ElemData::Verdict(v)
                } else {
                    ElemData::None
                }
            }
        };
        let userdata = a.get(attr::SET_ELEM_USERDATA).map(|u| u.payload.to_vec());
        out.push(Elem { key: key.payload.to_vec(), data, userdata });
    }
    out
}

/// The table a message (event or dump reply) is about, and the chain or
/// set name when it has one.
pub fn object_of<'a>(m: &wire::Message<'a>) -> (Option<&'a str>, Option<&'a str>) {
    let attrs = m.attrs();
    let s = |k| attrs.get(k).and_then(|a| a.str());
    match nft_msg(m.msg_type) {
        Some(msg::NEWTABLE | msg::DELTABLE) => (s(attr::TABLE_NAME), None),
        Some(msg::NEWCHAIN | msg::DELCHAIN) => (s(attr::CHAIN_TABLE), s(attr::CHAIN_NAME)),
        Some(msg::NEWRULE | msg::DELRULE) => (s(attr::RULE_TABLE), s(attr::RULE_CHAIN)),
        Some(msg::NEWSET | msg::DELSET) => (s(attr::SET_TABLE), s(attr::SET_NAME)),
        Some(msg::NEWSETELEM | msg::DELSETELEM) => (s(attr::SET_ELEM_LIST_TABLE), s(attr::SET_ELEM_LIST_SET)),
        _ => (None, None),
    }
}

/// Reads `NEWGEN`: (generation, pid and name of the process that made it).
pub fn parse_gen(m: &wire::Message<'_>) -> Option<(u32, Option<u32>, Option<String>)> {
    if nft_msg(m.msg_type) != Some(msg::NEWGEN) {
        return None;
    }
    let a = m.attrs();
    Some((
        a.get(attr::GEN_ID)?.be32()?,
        a.get(attr::GEN_PROC_PID).and_then(|p| p.be32()),
        a.get(attr::GEN_PROC_NAME).and_then(|p| p.str()).map(str::to_string),
    ))
}
