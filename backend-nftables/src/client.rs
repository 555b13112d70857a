//! The kernel side: what the dataplane asks of nf_tables, and the real
//! implementation (one netlink socket, opened inside the backend's network
//! namespace on first use and kept).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;

use proxy_core::{IpFamily, NetNamespace};

use crate::error::Error;
use crate::netlink::nft::{self, msg};
use crate::netlink::wire::Messages;
use crate::netlink::{Conn, Elem, NlError};
use crate::render::{TABLE, nfproto};

/// A finished transaction.
#[derive(Clone, Debug)]
pub struct Transaction {
    pub bytes: Vec<u8>,
    pub last: Option<u32>,
    pub what: Vec<(u32, String)>,
    pub messages: usize,
}

impl Transaction {
    pub fn from_batch(b: nft::Batch) -> Transaction {
        let what = b.descriptions();
        let messages = b.messages();
        let (bytes, last) = b.finish();
        Transaction { bytes, last, what, messages }
    }

    fn describe(&self, seq: u32) -> String {
        match self.what.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) => self.what[i].1.clone(),
            Err(_) => format!("message {seq}"),
        }
    }
}

/// What we read back of our table in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableDump {
    pub exists: bool,
    /// (chain name, number of rules).
    pub chains: Vec<(String, usize)>,
    pub sets: Vec<String>,
}

/// nf_tables as the dataplane uses it.
pub trait Kernel: Send + Sync + fmt::Debug {
    /// Commits one transaction (all or nothing).
    fn apply(&self, tx: &Transaction) -> Result<(), Error>;
    /// Every element of one of our sets.
    fn elements(&self, family: IpFamily, set: &str) -> Result<Vec<Elem>, Error>;
    /// Our table's chains (with rule counts) and sets; `exists: false` when it is gone.
    fn table(&self, family: IpFamily) -> Result<TableDump, Error>;
    /// The ruleset generation (moves with every commit by anyone).
    fn generation(&self) -> Result<u32, Error>;
    /// Whether a transaction whose `NEWGEN` event names netlink port `port`
    /// as its sender was committed through [`Kernel::apply`] (the event
    /// monitor's test for "someone else changed our table").
    fn commits_from(&self, port: u32) -> bool {
        let _ = port;
        false
    }
}

/// The real kernel, in a network namespace.
///
/// Every call goes through one socket, opened in the namespace on first use
/// and kept: entering the namespace costs a thread and a `setns`, and the
/// socket's port id is what tells our commits from anyone else's in the
/// event stream. After any failed call the socket is replaced, so that an
/// unread reply to a failed request cannot be taken for the answer to the
/// next one.
#[derive(Debug)]
pub struct SystemKernel {
    netns: NetNamespace,
    conn: Mutex<Connection>,
}

#[derive(Debug, Default)]
struct Connection {
    open: Option<Conn>,
    /// Ports of sockets replaced after a failure: their commits' events may
    /// still be on their way to the monitor.
    retired: VecDeque<u32>,
}

/// Ports of replaced sockets kept (a socket is replaced only after a failure).
const RETIRED_PORTS: usize = 16;

fn nl(operation: &str, e: NlError) -> Error {
    Error::Netlink { operation: operation.to_string(), source: e }
}

impl SystemKernel {
    pub fn new(netns: NetNamespace) -> SystemKernel {
        SystemKernel { netns, conn: Mutex::new(Connection::default()) }
    }

    pub fn netns(&self) -> &NetNamespace {
        &self.netns
    }

    fn run<T>(&self, operation: &str, f: impl FnOnce(&mut Conn) -> Result<T, NlError>) -> Result<T, Error> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = match conn.open.take() {
            Some(c) => c,
            // A netlink socket belongs to the namespace it was created in,
            // whichever thread uses it later.
            None => self
                .netns
                .run(Conn::open)
                .map_err(|e| Error::Namespace { netns: self.netns.label(), source: e })?
                .map_err(|e| nl(operation, NlError::Io(e)))?,
        };
        let r = f(&mut c);
        if r.is_ok() {
            conn.open = Some(c);
        } else {
            if conn.retired.len() == RETIRED_PORTS {
                conn.retired.pop_front();
            }
            conn.retired.push_back(c.port());
        }
        r.map_err(|e| nl(operation, e))
    }
}

impl Kernel for SystemKernel {
    fn apply(&self, tx: &Transaction) -> Result<(), Error> {
        self.run("commit", |c| c.apply(&tx.bytes, tx.last, &|seq| tx.describe(seq)))
    }

    fn elements(&self, family: IpFamily, set: &str) -> Result<Vec<Elem>, Error> {
        self.run("list set", |c| {
            let seq = c.seq();
            let replies = c.dump(&nft::dump_request(msg::GETSETELEM, nfproto(family), TABLE, Some(set), seq))?;
            let mut out = Vec::new();
            for data in &replies {
                for m in Messages::new(data) {
                    if nft::nft_msg(m.msg_type) == Some(msg::NEWSETELEM) {
                        out.extend(nft::parse_elements(&m));
                    }
                }
            }
            Ok(out)
        })
    }

    fn table(&self, family: IpFamily) -> Result<TableDump, Error> {
        let f = nfproto(family);
        self.run("list table", |c| {
            let seq = c.seq();
            match c.request(&nft::get_table_request(f, TABLE, seq)) {
                Ok(_) => {}
                Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(TableDump::default()),
                Err(e) => return Err(e),
            }
            let mut dump = TableDump { exists: true, ..TableDump::default() };
            let mut rules: std::collections::BTreeMap<String, usize> = Default::default();
            for (m_kind, _) in [(msg::GETCHAIN, ()), (msg::GETRULE, ()), (msg::GETSET, ())] {
                let seq = c.seq();
                for data in c.dump(&nft::dump_request(m_kind, f, TABLE, None, seq))? {
                    for m in Messages::new(&data) {
                        let (table, name) = nft::object_of(&m);
                        if table != Some(TABLE) {
                            continue;
                        }
                        let Some(name) = name else { continue };
                        match nft::nft_msg(m.msg_type) {
                            Some(msg::NEWCHAIN) => {
                                rules.entry(name.to_string()).or_insert(0);
                            }
                            Some(msg::NEWRULE) => *rules.entry(name.to_string()).or_insert(0) += 1,
                            Some(msg::NEWSET) => dump.sets.push(name.to_string()),
                            _ => {}
                        }
                    }
                }
            }
            dump.chains = rules.into_iter().collect();
            Ok(dump)
        })
    }

    fn generation(&self) -> Result<u32, Error> {
        self.run("read generation", |c| c.generation())
    }

    fn commits_from(&self, port: u32) -> bool {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.open.as_ref().is_some_and(|c| c.port() == port) || conn.retired.contains(&port)
    }
}
