//! Netlink framing: messages, attributes, nesting, and reading them back.
//!
//! Hand-written on purpose (see the crate README, "Netlink layer"): the
//! workspace's netlink-packet-netfilter 0.4 models tables, chains, rules and
//! sets but none of the expressions this backend needs beyond payload, cmp,
//! lookup, bitwise, immediate and meta (no numgen, ct, fib, nat, masq,
//! reject, dynset) and no batches; its typed values also cost an allocation
//! per attribute, where a full sync at 10,000 Services writes about 150,000
//! set elements. Here a message is appended straight into one buffer.
//! The tests decode our bytes with netlink-packet-netfilter as an
//! independent check.

/// `NLA_F_NESTED`: set on nested attributes, as libmnl does.
pub const NLA_F_NESTED: u16 = 0x8000;
/// Attribute type bits without the flags.
pub const NLA_TYPE_MASK: u16 = 0x3fff;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A buffer of netlink messages under construction.
#[derive(Clone, Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
    msg_start: usize,
    seq: u32,
}

impl Writer {
    pub fn new(seq: u32) -> Self {
        Writer { buf: Vec::with_capacity(4096), msg_start: 0, seq }
    }

    /// The sequence number the next message gets.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Starts a netfilter message: `nlmsghdr` then `nfgenmsg` (family,
    /// version 0, res_id big-endian). Returns its sequence number.
    pub fn begin(&mut self, msg_type: u16, flags: u16, family: u8, res_id: u16) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.msg_start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in `end`
        self.buf.extend_from_slice(&msg_type.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        seq
    }

    /// Finishes the message started last.
    pub fn end(&mut self) {
        let len = (self.buf.len() - self.msg_start) as u32;
        self.buf[self.msg_start..self.msg_start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// One attribute with a payload, padded to 4 bytes.
    pub fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(self.buf.len() + align4(len) - len, 0);
    }

    pub fn attr_str(&mut self, kind: u16, s: &str) {
        let len = 4 + s.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.buf.resize(self.buf.len() + align4(len) - len, 0);
    }

    /// nf_tables numbers are big-endian on the wire.
    pub fn attr_be32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }

    pub fn attr_be64(&mut self, kind: u16, v: u64) {
        self.attr(kind, &v.to_be_bytes());
    }

    /// Opens a nested attribute; close it with [`Writer::nest_end`].
    pub fn nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    /// Closes a nested attribute. A nest longer than an attribute can say
    /// (64 KiB) is a bug of the caller, which must split its messages.
    pub fn nest_end(&mut self, at: usize) {
        let len = self.buf.len() - at;
        debug_assert!(len <= u16::MAX as usize, "nested attribute of {len} bytes");
        self.buf[at..at + 2].copy_from_slice(&(len.min(u16::MAX as usize) as u16).to_ne_bytes());
    }

    /// Bytes written since `at` (for splitting long element lists).
    pub fn since(&self, at: usize) -> usize {
        self.buf.len() - at
    }
}

/// One netlink message read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub port: u32,
    /// Everything after `nlmsghdr`.
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// The nfgenmsg family of a netfilter message.
    pub fn family(&self) -> Option<u8> {
        self.payload.first().copied()
    }

    /// The attributes after `nfgenmsg`.
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs::new(self.payload.get(NFGENMSG_LEN..).unwrap_or(&[]))
    }

    /// For `NLMSG_ERROR`: the error code (0 is an acknowledgement) and the
    /// sequence number of the request it answers.
    pub fn error(&self) -> Option<(i32, u32)> {
        if self.msg_type != NLMSG_ERROR || self.payload.len() < 4 + NLMSG_HDRLEN {
            return None;
        }
        let code = i32::from_ne_bytes(self.payload[0..4].try_into().ok()?);
        let seq = u32::from_ne_bytes(self.payload[12..16].try_into().ok()?);
        Some((code, seq))
    }
}

/// Iterates over the messages of a buffer; stops at the first malformed one.
#[derive(Clone, Debug)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Messages { rest: buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        if self.rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(self.rest[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let m = Message {
            msg_type: u16::from_ne_bytes(self.rest[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(self.rest[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(self.rest[8..12].try_into().ok()?),
            port: u32::from_ne_bytes(self.rest[12..16].try_into().ok()?),
            payload: &self.rest[NLMSG_HDRLEN..len],
        };
        self.rest = self.rest.get(align4(len)..).unwrap_or(&[]);
        Some(m)
    }
}

/// One attribute read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr<'a> {
    /// The type without `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER`.
    pub kind: u16,
    pub payload: &'a [u8],
}

impl<'a> Attr<'a> {
    pub fn nested(&self) -> Attrs<'a> {
        Attrs::new(self.payload)
    }

    pub fn be32(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.payload.get(..4)?.try_into().ok()?))
    }

    pub fn be64(&self) -> Option<u64> {
        Some(u64::from_be_bytes(self.payload.get(..8)?.try_into().ok()?))
    }

    /// A NUL-terminated string.
    pub fn str(&self) -> Option<&'a str> {
        let end = self.payload.iter().position(|b| *b == 0).unwrap_or(self.payload.len());
        std::str::from_utf8(&self.payload[..end]).ok()
    }
}

/// Iterates over a run of attributes; stops at the first malformed one.
#[derive(Clone, Debug)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Attrs { rest: buf }
    }

    /// The first attribute of `kind`.
    pub fn get(&self, kind: u16) -> Option<Attr<'a>> {
        self.clone().find(|a| a.kind == kind)
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;

    fn next(&mut self) -> Option<Attr<'a>> {
        if self.rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.rest[0], self.rest[1]]) as usize;
        let kind = u16::from_ne_bytes([self.rest[2], self.rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let a = Attr { kind, payload: &self.rest[4..len] };
        self.rest = self.rest.get(align4(len)..).unwrap_or(&[]);
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut w = Writer::new(5);
        let seq = w.begin(0x0a00, NLM_F_REQUEST, 2, 0);
        w.attr_str(1, "ab");
        let n = w.nest(2);
        w.attr_be32(1, 7);
        w.nest_end(n);
        w.end();
        assert_eq!(seq, 5);
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            // nlmsghdr: length 40, type 0x0a00, flags REQUEST, seq 5, port 0
            40, 0, 0, 0,  0x00, 0x0a,  1, 0,  5, 0, 0, 0,  0, 0, 0, 0,
            // nfgenmsg: family 2, version 0, res_id 0
            2, 0, 0, 0,
            // attr 1 "ab\0" (length 7, padded to 8)
            7, 0, 1, 0,  b'a', b'b', 0, 0,
            // attr 2 nested (length 12, NLA_F_NESTED)
            12, 0, 2, 0x80,
            //   attr 1 be32 7
            8, 0, 1, 0,  0, 0, 0, 7,
        ];
        assert_eq!(w.bytes(), &expected[..]);
        let msgs: Vec<Message<'_>> = Messages::new(w.bytes()).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].msg_type, msgs[0].seq, msgs[0].family()), (0x0a00, 5, Some(2)));
        let attrs: Vec<Attr<'_>> = msgs[0].attrs().collect();
        assert_eq!(attrs[0].str(), Some("ab"));
        assert_eq!(attrs[1].kind, 2);
        assert_eq!(attrs[1].nested().get(1).and_then(|a| a.be32()), Some(7));
    }

    #[test]
    fn truncated_input_stops_instead_of_panicking() {
        assert_eq!(Messages::new(&[40, 0, 0, 0, 1, 2]).count(), 0);
        assert_eq!(Messages::new(&[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).count(), 0);
        assert_eq!(Attrs::new(&[9, 0, 1, 0, 1]).count(), 0);
        assert_eq!(Attrs::new(&[2, 0, 1, 0]).count(), 0);
    }
}
