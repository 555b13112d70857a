//! Contested frontends: two Service ports claiming the same address, port
//! and protocol (two Services with one externalIP, a load-balancer IP
//! another Service has as its externalIP, a node port twice in manifests).
//!
//! kube-proxy leaves the outcome to chance: every mode serves exactly one of
//! the claimants, but which one follows Go's map iteration order, so it can
//! change at any sync (iptables: the first of both rules in KUBE-SERVICES;
//! nftables: the last element written to the service-ips map; ipvs: the last
//! Service to set the virtual server's destinations). Cilium refuses a
//! frontend another Service already owns ("frontend already owned by another
//! service"): the first its agent saw keeps it. We keep "exactly one
//! serves it" and decide which once, for every backend: **the oldest
//! Service** (`metadata.creationTimestamp`; Services without one after
//! those with one), then namespace/name, then the port's place in the
//! Service. Oldest-first means a new Service cannot take over a frontend
//! another one already serves (the externalIP interception of
//! CVE-2020-8554); the name order only breaks ties.
//!
//! The losers keep the frontend in their spec and list it in
//! [`ServicePortPlan::contested`], so [`ServicePortPlan::frontends`] (and so
//! flow tables, expected states and every backend) leave it out. When the
//! winner goes away, the next claimant's plan changes and it takes over.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::model::{IpFamily, Protocol, ServiceName};
use crate::plan::{Frontend, ServicePlan};

/// What makes two frontends the same place for a packet: address (none for
/// node ports), family, port and protocol. The kind does not count: a
/// ClusterIP and another Service's externalIP on one address and port collide.
type Key = (Option<IpAddr>, IpFamily, u16, Protocol);

fn key(f: &Frontend) -> Key {
    (f.ip, f.family, f.port, f.protocol)
}

/// One claim, ordered by precedence (the smallest serves the frontend).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    /// `(false, t)` for a Service created at `t`, `(true, 0)` without a timestamp.
    created: (bool, i64),
    service: ServiceName,
    /// The index of the port plan in [`ServicePlan::ports`].
    port: usize,
}

fn claims_of(plan: &ServicePlan) -> impl Iterator<Item = (Key, Claim)> + '_ {
    let created = plan.service.created.map_or((true, 0), |t| (false, t));
    plan.ports.iter().enumerate().flat_map(move |(port, pp)| {
        pp.claimed_frontends().map(move |f| (key(&f), Claim { created, service: plan.name().clone(), port }))
    })
}

/// Every claimed frontend and its claimants, kept up to date as plans change.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    /// Claimants per frontend, in precedence order; almost always one.
    by_key: HashMap<Key, Vec<Claim>>,
}

impl Claims {
    /// Claims of every plan (a snapshot made from plans).
    pub fn of<'a>(plans: impl IntoIterator<Item = &'a ServicePlan>) -> Claims {
        let mut claims = Claims::default();
        for plan in plans {
            claims.update(None, Some(plan));
        }
        claims
    }

    /// Replaces one Service's claims (`old` as last recorded, `new` now; either
    /// may be absent). Returns the other Services that claim any frontend
    /// involved: whether they serve it may have changed.
    pub fn update(&mut self, old: Option<&ServicePlan>, new: Option<&ServicePlan>) -> BTreeSet<ServiceName> {
        let mut touched = BTreeSet::new();
        for (k, claim) in old.into_iter().flat_map(claims_of) {
            if let Some(list) = self.by_key.get_mut(&k) {
                list.retain(|c| *c != claim);
                if list.is_empty() {
                    self.by_key.remove(&k);
                }
            }
            touched.insert(k);
        }
        for (k, claim) in new.into_iter().flat_map(claims_of) {
            let list = self.by_key.entry(k).or_default();
            if let Err(at) = list.binary_search(&claim) {
                list.insert(at, claim);
            }
            touched.insert(k);
        }
        let me = new.or(old).map(|p| p.name().clone());
        touched
            .iter()
            .filter_map(|k| self.by_key.get(k))
            .flatten()
            .map(|c| &c.service)
            .filter(|s| Some(*s) != me.as_ref())
            .cloned()
            .collect()
    }

    /// Sets [`ServicePortPlan::contested`] on every port of `plan`: the
    /// frontends another claim precedes. Returns whether anything changed.
    ///
    /// [`ServicePortPlan::contested`]: crate::ServicePortPlan::contested
    pub fn apply(&self, plan: &mut ServicePlan) -> bool {
        let created = plan.service.created.map_or((true, 0), |t| (false, t));
        let name = plan.name().clone();
        let mut changed = false;
        for (port, pp) in plan.ports.iter_mut().enumerate() {
            let mine = Claim { created, service: name.clone(), port };
            let lost: Vec<Frontend> = pp
                .claimed_frontends()
                .filter(|f| self.by_key.get(&key(f)).and_then(|l| l.first()).is_some_and(|first| *first != mine))
                .collect();
            if lost != pp.contested {
                pp.contested = lost;
                changed = true;
            }
        }
        changed
    }

    /// The frontends more than one Service port claims, with the claimants
    /// in precedence order (the first serves it), for logs and `inspect`.
    pub fn contested(&self) -> impl Iterator<Item = Vec<(ServiceName, usize)>> + '_ {
        self.by_key.values().filter(|l| l.len() > 1).map(|l| l.iter().map(|c| (c.service.clone(), c.port)).collect())
    }
}
