//! `FakeIpvs`: an in-memory IPVS with the kernel's answers (EEXIST, ESRCH,
//! ENOENT), for reconciliation tests on hosts without IPVS.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::client::{ClientError, Ipvs};
use crate::message::{RealServer, Request, ServiceKey, VirtualServer};

/// An in-memory IPVS table.
#[derive(Debug, Default, Clone)]
pub struct FakeIpvs {
    pub services: BTreeMap<ServiceKey, (VirtualServer, BTreeMap<SocketAddr, RealServer>)>,
    /// Every write request executed, in order.
    pub log: Vec<Request>,
}

fn kernel(req: &Request, errno: i32) -> ClientError {
    ClientError::Kernel { operation: req.describe(), errno, message: None }
}

impl FakeIpvs {
    pub fn new() -> Self {
        FakeIpvs::default()
    }

    /// Sets the connection counters of a real server (as traffic would).
    pub fn set_conns(&mut self, key: &ServiceKey, dest: SocketAddr, active: u32, inactive: u32) {
        if let Some(rs) = self.services.get_mut(key).and_then(|(_, d)| d.get_mut(&dest)) {
            rs.active_conns = active;
            rs.inactive_conns = inactive;
        }
    }

    fn apply(&mut self, req: &Request) -> Result<(), ClientError> {
        match req {
            Request::NewService(vs) => {
                if self.services.contains_key(&vs.key) {
                    return Err(kernel(req, libc::EEXIST));
                }
                self.services.insert(vs.key, (vs.clone(), BTreeMap::new()));
            }
            Request::SetService(vs) => match self.services.get_mut(&vs.key) {
                Some((cur, _)) => *cur = vs.clone(),
                None => return Err(kernel(req, libc::ESRCH)),
            },
            Request::DelService(key) => {
                if self.services.remove(key).is_none() {
                    return Err(kernel(req, libc::ESRCH));
                }
            }
            Request::NewDest(key, rs) => {
                let (_, dests) = self.services.get_mut(key).ok_or_else(|| kernel(req, libc::ESRCH))?;
                if dests.contains_key(&rs.socket_addr()) {
                    return Err(kernel(req, libc::EEXIST));
                }
                dests.insert(rs.socket_addr(), rs.clone());
            }
            Request::SetDest(key, rs) => {
                let (_, dests) = self.services.get_mut(key).ok_or_else(|| kernel(req, libc::ESRCH))?;
                let cur = dests.get_mut(&rs.socket_addr()).ok_or_else(|| kernel(req, libc::ENOENT))?;
                cur.weight = rs.weight;
                cur.fwd_method = rs.fwd_method;
            }
            Request::DelDest(key, addr, port) => {
                let (_, dests) = self.services.get_mut(key).ok_or_else(|| kernel(req, libc::ESRCH))?;
                if dests.remove(&SocketAddr::new(*addr, *port)).is_none() {
                    return Err(kernel(req, libc::ENOENT));
                }
            }
            Request::SetTimeouts { .. } => {}
            Request::ResolveFamily
            | Request::GetInfo
            | Request::GetService(_)
            | Request::DumpServices
            | Request::DumpDests(_) => {
                return Err(kernel(req, libc::EINVAL));
            }
        }
        self.log.push(req.clone());
        Ok(())
    }
}

impl Ipvs for FakeIpvs {
    fn services(&mut self) -> Result<Vec<VirtualServer>, ClientError> {
        Ok(self.services.values().map(|(vs, _)| vs.clone()).collect())
    }

    fn service(&mut self, key: &ServiceKey) -> Result<Option<VirtualServer>, ClientError> {
        Ok(self.services.get(key).map(|(vs, _)| vs.clone()))
    }

    fn dests(&mut self, key: &ServiceKey) -> Result<Vec<RealServer>, ClientError> {
        match self.services.get(key) {
            Some((_, dests)) => Ok(dests.values().cloned().collect()),
            None => Err(kernel(&Request::DumpDests(*key), libc::ESRCH)),
        }
    }

    fn execute(&mut self, requests: &[Request]) -> Result<(), ClientError> {
        // Like the kernel: every request runs, the first failure is reported.
        let mut first = None;
        let mut failed = 0;
        for r in requests {
            if let Err(e) = self.apply(r) {
                failed += 1;
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(()),
            Some(e) if failed == 1 => Err(e),
            Some(e) => Err(ClientError::Batch { failed, total: requests.len(), first: Box::new(e) }),
        }
    }
}
