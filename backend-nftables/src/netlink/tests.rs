//! Byte-level round trips of the encoding: exact bytes for the framing,
//! netlink-packet-netfilter as an independent decoder for what it knows,
//! and our own reader for the rest.

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nftables::{
    Cmp, DataAttribute, ExpressionAttribute, Expressions, ListAttribute, Lookup, NfTablesMessage, Payload,
    RuleAttribute, SetAttribute, TableAttribute, VerdictAttribute,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};

use super::nft::{self, CmpOp, CtKey, MetaKey, PayloadBase, msg, reg};
use super::wire::{self, Messages};
use super::{Batch, Elem, ElemData, Expr, Hook, HookNum, SetData, SetSpec, Verdict};

fn nf_messages(bytes: &[u8]) -> Vec<NfTablesMessage> {
    let mut out = Vec::new();
    for m in Messages::new(bytes) {
        if nft::nft_msg(m.msg_type).is_none() {
            continue;
        }
        let len = 16 + m.payload.len();
        let start = m.payload.as_ptr() as usize - bytes.as_ptr() as usize - 16;
        let parsed = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes[start..start + len])
            .unwrap_or_else(|e| panic!("netlink-packet-netfilter cannot read our message: {e}"));
        match parsed.payload {
            NetlinkPayload::InnerMessage(NetfilterMessage { inner: NetfilterMessageInner::NfTables(n), .. }) => {
                out.push(n)
            }
            other => panic!("not an nf_tables message: {other:?}"),
        }
    }
    out
}

/// A batch that adds one table, byte by byte (what `nft add table ip t` sends).
#[test]
fn batch_with_a_table_bytes() {
    let mut b = Batch::new(nft::NFPROTO_IPV4, 100);
    b.add_table("t");
    let (bytes, last) = b.finish();
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        // nlmsghdr: length 20, NFNL_MSG_BATCH_BEGIN (0x10), flags REQUEST, seq 100, port 0
        20, 0, 0, 0,   0x10, 0,   0x01, 0,   100, 0, 0, 0,   0, 0, 0, 0,
        // nfgenmsg: AF_UNSPEC, version 0, res_id NFNL_SUBSYS_NFTABLES (10, big-endian)
        0, 0, 0, 10,
        // nlmsghdr: length 36, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE, REQUEST|ACK|CREATE, seq 101
        36, 0, 0, 0,   0x00, 0x0a,   0x05, 0x04,   101, 0, 0, 0,   0, 0, 0, 0,
        // nfgenmsg: NFPROTO_IPV4, version 0, res_id 0
        2, 0, 0, 0,
        // NFTA_TABLE_NAME "t"
        6, 0, 1, 0,   b't', 0, 0, 0,
        // NFTA_TABLE_FLAGS 0
        8, 0, 2, 0,   0, 0, 0, 0,
        // NFNL_MSG_BATCH_END, seq 102
        20, 0, 0, 0,   0x11, 0,   0x01, 0,   102, 0, 0, 0,   0, 0, 0, 0,
        0, 0, 0, 10,
    ];
    assert_eq!(bytes, expected);
    assert_eq!(last, Some(101));
    let msgs = nf_messages(&bytes);
    match &msgs[..] {
        [NfTablesMessage::NewTable(t)] => assert!(t.attributes.contains(&TableAttribute::Name("t".into()))),
        other => panic!("{other:?}"),
    }
}

/// One map element with data and userdata, byte by byte.
#[test]
fn set_element_bytes() {
    let mut b = Batch::new(nft::NFPROTO_IPV4, 1);
    let e = Elem { key: vec![10, 0, 0, 1], data: ElemData::Value(vec![0, 80, 0, 0]), userdata: Some(vec![b'c']) };
    b.elements("t", "m", &[&e], false);
    let (bytes, _) = b.finish();
    let body = &bytes[20..bytes.len() - 20];
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        // nlmsghdr: length 76, NEWSETELEM (0x0a0c), REQUEST|ACK|CREATE, seq 2
        76, 0, 0, 0,   0x0c, 0x0a,   0x05, 0x04,   2, 0, 0, 0,   0, 0, 0, 0,
        2, 0, 0, 0,
        // NFTA_SET_ELEM_LIST_TABLE "t", NFTA_SET_ELEM_LIST_SET "m"
        6, 0, 1, 0,   b't', 0, 0, 0,
        6, 0, 2, 0,   b'm', 0, 0, 0,
        // NFTA_SET_ELEM_LIST_ELEMENTS (nested, 40 bytes)
        40, 0, 3, 0x80,
        //   NFTA_LIST_ELEM (nested, 36)
        36, 0, 1, 0x80,
        //     NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE 10.0.0.1 }
        12, 0, 1, 0x80,   8, 0, 1, 0,   10, 0, 0, 1,
        //     NFTA_SET_ELEM_DATA { NFTA_DATA_VALUE port 80 big-endian, padded }
        12, 0, 2, 0x80,   8, 0, 1, 0,   0, 80, 0, 0,
        //     NFTA_SET_ELEM_USERDATA "c"
        5, 0, 6, 0,   b'c', 0, 0, 0,
    ];
    assert_eq!(body, &expected[..]);
    let m = Messages::new(body).next().unwrap();
    assert_eq!(nft::parse_elements(&m), vec![e]);
    assert_eq!(nft::object_of(&m), (Some("t"), Some("m")));
}

#[test]
fn elements_round_trip_through_our_reader_and_split_over_messages() {
    let mut elems = Vec::new();
    for i in 0..5000u32 {
        let data = match i % 3 {
            0 => ElemData::None,
            1 => ElemData::Value(i.to_ne_bytes().repeat(5)),
            _ => ElemData::Verdict(Verdict::Goto(format!("chain-{i}"))),
        };
        elems.push(Elem { key: i.to_be_bytes().to_vec(), data, userdata: (i % 2 == 0).then(|| vec![b'x'; 3]) });
    }
    let mut b = Batch::new(nft::NFPROTO_IPV6, 1);
    b.elements("t", "s", &elems.iter().collect::<Vec<_>>(), false);
    assert!(b.messages() > 1, "5000 elements need more than one 64 KiB attribute");
    let (bytes, _) = b.finish();
    let mut back = Vec::new();
    for m in Messages::new(&bytes) {
        if nft::nft_msg(m.msg_type) == Some(msg::NEWSETELEM) {
            assert_eq!(m.family(), Some(nft::NFPROTO_IPV6));
            back.extend(nft::parse_elements(&m));
        }
    }
    assert_eq!(back, elems);
    // netlink-packet-netfilter reads the same messages.
    assert!(nf_messages(&bytes).iter().all(|m| matches!(m, NfTablesMessage::NewSetElement(_))));
}

/// A rule as netlink-packet-netfilter decodes it: `ip daddr . meta l4proto .
/// th dport` into registers, a map lookup, a goto.
#[test]
fn rule_decodes_independently() {
    let mut b = Batch::new(nft::NFPROTO_IPV4, 1);
    let exprs = vec![
        Expr::Payload { dreg: reg(1), base: PayloadBase::Network, offset: 16, len: 4 },
        Expr::MetaGet { dreg: reg(2), key: MetaKey::L4Proto },
        Expr::Cmp { sreg: reg(2), op: CmpOp::Eq, data: vec![6, 0, 0, 0] },
        Expr::Lookup { set: "frontends".into(), sreg: reg(0), dreg: Some(reg(0)), invert: false },
        Expr::Verdict(Verdict::Goto("dispatch".into())),
    ];
    b.add_rule("switchyard", "services", &exprs, None);
    let (bytes, _) = b.finish();
    let msgs = nf_messages(&bytes);
    let NfTablesMessage::NewRule(rule) = &msgs[0] else { panic!("{msgs:?}") };
    assert!(rule.attributes.contains(&RuleAttribute::Table("switchyard".into())));
    assert!(rule.attributes.contains(&RuleAttribute::Chain("services".into())));
    let list = rule
        .attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Expressions(l) => Some(l),
            _ => None,
        })
        .expect("expressions");
    let datas: Vec<&Expressions> = list
        .iter()
        .flat_map(|l| match l {
            ListAttribute::Element(v) => v.as_slice(),
            _ => &[],
        })
        .filter_map(|a| match a {
            ExpressionAttribute::Data(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(datas.len(), 5);
    let Expressions::Payload(p) = datas[0] else { panic!("{:?}", datas[0]) };
    assert!(p.contains(&Payload::Offset(16)) && p.contains(&Payload::Len(4)), "{p:?}");
    let Expressions::Cmp(c) = datas[2] else { panic!("{:?}", datas[2]) };
    assert!(c.contains(&Cmp::Data(DataAttribute::Value(vec![6, 0, 0, 0]))), "{c:?}");
    let Expressions::Lookup(l) = datas[3] else { panic!("{:?}", datas[3]) };
    assert!(l.contains(&Lookup::Set("frontends".into())), "{l:?}");
    let Expressions::Immediate(i) = datas[4] else { panic!("{:?}", datas[4]) };
    let verdict = format!("{i:?}");
    assert!(verdict.contains("Goto") && verdict.contains("dispatch"), "{verdict}");
    let _ = VerdictAttribute::Unspecified;
}

/// Every expression kind the backend uses, read back with our reader:
/// names and the attributes that carry the meaning.
#[test]
fn every_expression_round_trips() {
    let exprs = vec![
        Expr::Ct { dreg: reg(1), key: CtKey::State },
        Expr::Bitwise { sreg: reg(1), dreg: reg(1), mask: vec![8, 0, 0, 0], xor: vec![0; 4] },
        Expr::NumgenRandom { dreg: reg(5), modulus: 7 },
        Expr::FibAddrType { dreg: reg(1), daddr: true },
        Expr::Dnat { family: 2, addr: reg(9), proto: reg(10) },
        Expr::Masq { random_fully: true },
        Expr::Reject { tcp_reset: false, icmp_code: 3 },
        Expr::DynsetUpdate {
            set: "affinity".into(),
            sreg_key: reg(4),
            sreg_data: Some(reg(9)),
            timeout_ms: 10_800_000,
        },
        Expr::MetaSet { sreg: reg(0), key: MetaKey::Mark },
        Expr::Immediate { dreg: reg(0), data: 3u32.to_ne_bytes().to_vec() },
        Expr::Counter,
    ];
    let mut b = Batch::new(nft::NFPROTO_IPV4, 1);
    b.add_rule("t", "c", &exprs, Some("a comment"));
    let (bytes, _) = b.finish();
    let m = Messages::new(&bytes).nth(1).unwrap();
    let attrs = m.attrs();
    let list = attrs.get(nft::attr::RULE_EXPRESSIONS).unwrap();
    type Decoded = Vec<(String, Vec<(u16, Vec<u8>)>)>;
    let got: Decoded = list
        .nested()
        .map(|el| {
            let a = el.nested();
            let name = a.get(nft::attr::EXPR_NAME).and_then(|n| n.str()).unwrap().to_string();
            let data = a.get(nft::attr::EXPR_DATA).unwrap().nested().map(|x| (x.kind, x.payload.to_vec())).collect();
            (name, data)
        })
        .collect();
    let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(
        names,
        ["ct", "bitwise", "numgen", "fib", "nat", "masq", "reject", "dynset", "meta", "immediate", "counter"]
    );
    let attr = |i: usize, k: u16| got[i].1.iter().find(|a| a.0 == k).map(|a| a.1.clone()).unwrap();
    assert_eq!(attr(2, 2), 7u32.to_be_bytes()); // NFTA_NG_MODULUS
    assert_eq!(attr(2, 3), 1u32.to_be_bytes()); // NFTA_NG_TYPE random
    assert_eq!(attr(3, 3), 2u32.to_be_bytes()); // NFTA_FIB_FLAGS daddr
    assert_eq!(attr(4, 1), 1u32.to_be_bytes()); // NFTA_NAT_TYPE dnat
    assert_eq!(attr(4, 3), reg(9).to_be_bytes()); // NFTA_NAT_REG_ADDR_MIN
    assert_eq!(attr(5, 1), nft::NAT_RANDOM_FULLY.to_be_bytes());
    assert_eq!(attr(6, 2), [3]); // NFTA_REJECT_ICMP_CODE
    assert_eq!(attr(7, 6), 10_800_000u64.to_be_bytes()); // NFTA_DYNSET_TIMEOUT (ms)
    assert_eq!(attr(7, 5), reg(9).to_be_bytes()); // NFTA_DYNSET_SREG_DATA
    assert_eq!(attr(8, 3), reg(0).to_be_bytes()); // NFTA_META_SREG
    let ud = attrs.get(nft::attr::RULE_USERDATA).unwrap();
    assert_eq!(ud.payload, b"\x00\x0aa comment\x00");
}

/// Sets, chains and deletions as netlink-packet-netfilter reads them.
#[test]
fn sets_and_chains_decode_independently() {
    let mut b = Batch::new(nft::NFPROTO_IPV6, 1);
    b.add_set(
        "t",
        &SetSpec {
            name: "affinity".into(),
            flags: nft::set_flags::TIMEOUT | nft::set_flags::EVAL,
            key_type: nft::concat(&[nft::types::MARK, nft::types::IP6ADDR]),
            key_len: 20,
            data: Some(SetData::Value(
                nft::concat(&[nft::types::IP6ADDR, nft::types::INET_SERVICE, nft::types::MARK]),
                24,
            )),
            ..SetSpec::default()
        },
        3,
    );
    b.add_chain("t", "nat-output", Some(Hook { num: HookNum::Output, priority: -100, kind: "nat" }));
    b.flush_chain("t", "fw-1");
    b.del_chain("t", "fw-1");
    b.del_table("t");
    let (bytes, last) = b.finish();
    let msgs = nf_messages(&bytes);
    assert_eq!(msgs.len(), 5);
    let NfTablesMessage::NewSet(s) = &msgs[0] else { panic!("{msgs:?}") };
    assert!(s.attributes.contains(&SetAttribute::KeyLen(20)), "{s:?}");
    assert!(s.attributes.contains(&SetAttribute::DataLen(24)), "{s:?}");
    assert!(s.attributes.contains(&SetAttribute::KeyType((19 << 6) | 8)), "{s:?}");
    assert!(matches!(msgs[1], NfTablesMessage::NewChain(_)));
    assert!(matches!(msgs[2], NfTablesMessage::DeleteRule(_)));
    assert!(matches!(msgs[3], NfTablesMessage::DeleteChain(_)));
    assert!(matches!(msgs[4], NfTablesMessage::DeleteTable(_)));
    // The hook priority is a signed number, big-endian.
    let m = Messages::new(&bytes).nth(2).unwrap();
    let hook = m.attrs().get(nft::attr::CHAIN_HOOK).unwrap();
    assert_eq!(hook.nested().get(nft::attr::HOOK_PRIORITY).unwrap().payload, (-100i32).to_be_bytes());
    assert_eq!(m.attrs().get(nft::attr::CHAIN_TYPE).and_then(|a| a.str()), Some("nat"));
    assert_eq!(last, Some(6));
}

/// Acknowledgements and errors as the kernel sends them (with NETLINK_CAP_ACK).
#[test]
fn errors_name_the_request() {
    #[rustfmt::skip]
    let raw: Vec<u8> = vec![
        // nlmsghdr: length 36, NLMSG_ERROR, flags 0x100 (capped), seq 7
        36, 0, 0, 0,   2, 0,   0, 1,   7, 0, 0, 0,   0, 0, 0, 0,
        // error -EEXIST (-17)
        0xef, 0xff, 0xff, 0xff,
        // the request's header: length 76, NEWSETELEM, seq 7
        76, 0, 0, 0,   0x0c, 0x0a,   5, 4,   7, 0, 0, 0,   0, 0, 0, 0,
    ];
    let m = Messages::new(&raw).next().unwrap();
    assert_eq!(m.error(), Some((-17, 7)));
    assert_eq!(m.msg_type, wire::NLMSG_ERROR);
}
