//! Against the real kernel, in throwaway network namespaces (root only;
//! ignored otherwise: see `testkit::needs_root`). The Service catalog and the namespace lab are
//! backend-iptables' test fixtures (one address plan for every backend).

#![allow(clippy::unwrap_used, reason = "tests")]

#[path = "../../backend-iptables/tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use backend_nftables::client::{Kernel, SystemKernel, TableDump, Transaction};
use backend_nftables::netlink::Elem;
use backend_nftables::netlink::nft::Batch;
use backend_nftables::render::{self, RenderConfig, TABLE};
use backend_nftables::{Error, NftablesDataplane, Settings};
use common::lab::Lab;
use common::{catalog, catalog_v6, masquerade, planner, request, tracker};
use proxy_core::{Dataplane, FamilySet, IpFamily, NetNamespace, ProgrammedState, Snapshot};

/// A network namespace for one test (a [`testkit::Netns`]: `swy-nft-<pid>-<n>-<tag>`), deleted on drop.
struct Netns(testkit::Netns);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("{}-{tag}", testkit::netns::unique_prefix("nft"));
        Netns(testkit::Netns::create(name).unwrap_or_else(|e| panic!("a namespace for the test: {e}")))
    }

    fn ns(&self) -> NetNamespace {
        NetNamespace::named(self.0.name())
    }

    fn nft(&self, args: &str) -> String {
        let out = self.0.exec("nft", &args.split_whitespace().collect::<Vec<_>>()).expect("nft");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

/// The real kernel, recording what each transaction contained.
#[derive(Debug)]
struct Recording {
    inner: SystemKernel,
    log: Mutex<Vec<Vec<String>>>,
}

impl Kernel for Recording {
    fn apply(&self, tx: &Transaction) -> Result<(), Error> {
        self.log.lock().unwrap().push(tx.what.iter().map(|w| w.1.clone()).collect());
        self.inner.apply(tx)
    }
    fn elements(&self, family: IpFamily, set: &str) -> Result<Vec<Elem>, Error> {
        self.inner.elements(family, set)
    }
    fn table(&self, family: IpFamily) -> Result<TableDump, Error> {
        self.inner.table(family)
    }
    fn generation(&self) -> Result<u32, Error> {
        self.inner.generation()
    }
}

fn settings(ns: &Netns, families: FamilySet) -> Settings {
    let mut s = Settings::new(ns.ns());
    s.families = families;
    s.node_ips = vec![common::NODE_IP.parse().unwrap(), common::NODE_IP6.parse().unwrap()];
    s
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn inspect_matches(rt: &tokio::runtime::Runtime, dp: &NftablesDataplane, snapshot: &Snapshot) -> Result<(), String> {
    let found: ProgrammedState = rt.block_on(dp.inspect()).map_err(|e| e.to_string())?;
    let diff = snapshot.expected_state().diff(&found);
    if diff.is_empty() { Ok(()) } else { Err(diff.iter().map(|d| format!("{d}\n")).collect()) }
}

#[testkit::needs_root]
#[test]
fn skeleton_loads_in_both_families() {
    let ns = Netns::new("skel");
    let kernel = Arc::new(SystemKernel::new(ns.ns()));
    for family in [IpFamily::V4, IpFamily::V6] {
        let mut cfg = RenderConfig::new(family);
        cfg.masquerade.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap(), "fd00:10:244::/64".parse().unwrap()];
        let b = |class, node_port, action, masquerade, count, timeout| render::Behaviour {
            class,
            node_port,
            action,
            masquerade,
            route: 0,
            count,
            timeout,
        };
        let behaviours = [
            b(render::CLASS_POD, false, render::ACTION_FORWARD, false, 3, 0),
            b(render::CLASS_NODE, true, render::ACTION_FORWARD, true, 1, 10800),
            b(render::CLASS_EXTERNAL, false, render::ACTION_REJECT, false, 0, 0),
            b(render::CLASS_EXTERNAL, true, render::ACTION_DROP, false, 0, 0),
        ];
        let skel = render::skeleton(&cfg, &behaviours.into());
        let mut b = Batch::new(render::nfproto(family), 1);
        b.add_table(TABLE);
        for (i, s) in skel.sets.iter().enumerate() {
            b.add_set(TABLE, s, i as u32 + 1);
        }
        for c in &skel.chains {
            b.add_chain(TABLE, &c.name, c.hook);
        }
        for (set, e) in &skel.elements {
            b.elements(TABLE, set, &[e], false);
        }
        for c in &skel.chains {
            for r in &c.rules {
                b.add_rule(TABLE, &c.name, r, None);
            }
        }
        let r = kernel.apply(&Transaction::from_batch(b));
        assert!(
            r.is_ok(),
            "{family:?}: {:?}\n{}",
            r.map_err(|e| proxy_core::ErrorChain(&e).to_string()),
            ns.nft("list ruleset")
        );
        let dump = kernel.table(family).unwrap();
        assert!(dump.exists);
        assert_eq!(dump.chains.len(), skel.chains.len());
    }
}

/// Every behaviour of the catalog, IPv4 and dual-stack: what `inspect()`
/// reads back from the kernel is what the core expects.
#[testkit::needs_root]
#[test]
fn catalog_reads_back_as_expected() {
    let rt = rt();
    for (tag, families) in [("v4", FamilySet::V4), ("dual", FamilySet::DUAL)] {
        let ns = Netns::new(&format!("cat-{tag}"));
        let (mut services, mut slices) = catalog();
        if families == FamilySet::DUAL {
            let (s6, sl6) = catalog_v6();
            services.extend(s6);
            slices.extend(sl6);
        }
        let mut t = tracker(planner(families, masquerade()), services, slices);
        let snapshot = t.snapshot();
        let dp = NftablesDataplane::new(settings(&ns, families), Arc::new(SystemKernel::new(ns.ns())));
        rt.block_on(dp.sync(request(snapshot.clone(), &[], true))).unwrap();
        assert_eq!(inspect_matches(&rt, &dp, &snapshot), Ok(()), "{tag}\n{}", ns.nft("list ruleset"));
        assert!(!snapshot.expected_state().frontends.is_empty());
    }
}

/// A partial sync for one changed endpoint sends only set elements (no
/// rule, no chain, no verdict), and leaves the kernel as a full sync would.
#[testkit::needs_root]
#[test]
fn endpoint_change_is_elements_only() {
    let rt = rt();
    let ns = Netns::new("partial");
    let (services, slices) = catalog();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let kernel = Arc::new(Recording { inner: SystemKernel::new(ns.ns()), log: Mutex::new(Vec::new()) });
    let dp = NftablesDataplane::new(settings(&ns, FamilySet::V4), kernel.clone());
    rt.block_on(dp.sync(request(t.snapshot(), &[], true))).unwrap();
    // basic: one local, one remote endpoint → replace the remote one.
    common::apply_slice(
        &mut t,
        proxy_core::testing::SliceBuilder::new("ns1", "basic-1", "basic")
            .port("http", 8080, "TCP")
            .endpoint(proxy_core::testing::endpoint("10.180.0.1").node(common::NODE))
            .endpoint(proxy_core::testing::endpoint("10.180.1.7").node("node-2")),
    );
    kernel.log.lock().unwrap().clear();
    let snapshot = t.snapshot();
    rt.block_on(dp.sync(request(snapshot.clone(), &["ns1/basic"], false))).unwrap();
    let log = kernel.log.lock().unwrap().clone();
    assert_eq!(log.len(), 1, "one transaction: {log:?}");
    assert!(log[0].iter().all(|m| m.contains("elements of set")), "{log:?}");
    assert!(log[0].iter().any(|m| m.contains("endpoints")), "{log:?}");
    assert_eq!(inspect_matches(&rt, &dp, &snapshot), Ok(()));
}

/// Service sets are created with a size (so the kernel picks its
/// fixed-size hash), and a size is a limit: a partial sync that would put
/// more elements in a set than it was created for rewrites the table with
/// bigger sets instead of failing (`ENFILE`).
#[testkit::needs_root]
#[test]
fn a_set_outgrowing_its_size_is_rewritten_bigger() {
    let rt = rt();
    let ns = Netns::new("grow");
    let (services, slices) = catalog();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let kernel = Arc::new(Recording { inner: SystemKernel::new(ns.ns()), log: Mutex::new(Vec::new()) });
    let dp = NftablesDataplane::new(settings(&ns, FamilySet::V4), kernel.clone());
    rt.block_on(dp.sync(request(t.snapshot(), &[], true))).unwrap();
    // 1,200 endpoints for one Service: past the smallest set size (1,024).
    for half in 0..2u32 {
        let mut slice = proxy_core::testing::SliceBuilder::new("ns1", &format!("basic-big-{half}"), "basic")
            .port("http", 8080, "TCP");
        for i in 0..600u32 {
            let n = half * 600 + i;
            let ip = format!("10.181.{}.{}", n / 250, n % 250 + 1);
            slice = slice.endpoint(proxy_core::testing::endpoint(&ip).node("node-2"));
        }
        common::apply_slice(&mut t, slice);
    }
    kernel.log.lock().unwrap().clear();
    let snapshot = t.snapshot();
    rt.block_on(dp.sync(request(snapshot.clone(), &["ns1/basic"], false))).unwrap();
    let log = kernel.log.lock().unwrap().clone();
    assert!(log.iter().flatten().any(|m| m == "delete table switchyard"), "rewritten: {log:?}");
    assert_eq!(inspect_matches(&rt, &dp, &snapshot), Ok(()));
    let endpoints = SystemKernel::new(ns.ns()).elements(IpFamily::V4, render::sets::ENDPOINTS).unwrap();
    assert!(endpoints.len() > 1200, "{} endpoints elements", endpoints.len());
}

/// Deletes one element of `set` (of `frontends`: one for outside sources,
/// which `inspect()` reads) with our own netlink code, as another program would.
fn delete_one_element(ns: &Netns, set: &str) {
    let kernel = SystemKernel::new(ns.ns());
    let elems = kernel.elements(IpFamily::V4, set).unwrap();
    let e = elems
        .iter()
        .find(|e| {
            set != render::sets::FRONTENDS
                || render::parse_frontend_key(&e.key).is_some_and(|(b, _)| b.class == render::CLASS_EXTERNAL)
        })
        .expect("an element to delete")
        .clone();
    let mut b = Batch::new(render::nfproto(IpFamily::V4), 1);
    b.elements(TABLE, set, &[&e], true);
    kernel.apply(&Transaction::from_batch(b)).unwrap();
}

/// Someone else deletes our table, flushes the ruleset, flushes one of our
/// chains or deletes an element: the event monitor rewrites the table at
/// once (no sync involved), and the next sync reports the repair.
#[testkit::needs_root]
#[test]
fn tampering_is_repaired_on_the_event() {
    let rt = rt();
    let ns = Netns::new("events");
    let (services, slices) = catalog();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let snapshot = t.snapshot();
    let dp = NftablesDataplane::new(settings(&ns, FamilySet::V4), Arc::new(SystemKernel::new(ns.ns())));
    // Returns once subscribed: no tamper below can come before it.
    dp.watch();
    rt.block_on(dp.sync(request(snapshot.clone(), &[], true))).unwrap();
    let mut times = Vec::new();
    for (what, tamper) in [
        ("nft delete table", Box::new(|| drop(ns.nft("delete table ip switchyard"))) as Box<dyn Fn()>),
        ("nft flush ruleset", Box::new(|| drop(ns.nft("flush ruleset")))),
        ("nft flush chain", Box::new(|| drop(ns.nft("flush chain ip switchyard svc-external")))),
        ("element deleted", Box::new(|| delete_one_element(&ns, render::sets::ENDPOINTS))),
    ] {
        let before = Instant::now();
        tamper();
        let polled = Instant::now();
        testkit::eventually_blocking(what, || {
            inspect_matches(&rt, &dp, &snapshot).is_ok() && {
                let dump = SystemKernel::new(ns.ns()).table(IpFamily::V4).unwrap();
                dump.chains.iter().any(|(c, n)| c == "svc-external" && *n > 0)
            }
        });
        times.push((what, polled.elapsed(), before.elapsed()));
    }
    eprintln!("repair times (tamper to restored, polled): {times:?}");
    let outcome = rt.block_on(dp.sync(request(snapshot.clone(), &[], false))).unwrap();
    assert!(outcome.repairs.get("table").copied().unwrap_or(0) >= 2, "{:?}", outcome.repairs);
    assert!(outcome.repairs.contains_key("rule"), "{:?}", outcome.repairs);
    assert!(outcome.repairs.contains_key("element"), "{:?}", outcome.repairs);
}

/// Remembers a client of the first affinity frontend of the IPv4 table in
/// the `affinity` map, as the packet path does (`affinity-members` key:
/// frontend . route . timeout . endpoint; `affinity`: frontend . route .
/// client → endpoint), through a socket of its own. Returns the element.
fn remember_a_client(ns: &Netns) -> Elem {
    let kernel = SystemKernel::new(ns.ns());
    let members = kernel.elements(IpFamily::V4, render::sets::MEMBERS).unwrap();
    let m = members.first().expect("an affinity Service in the catalog");
    let mut key = m.key[..16].to_vec();
    key.extend_from_slice(&[192, 0, 2, 99]);
    let e = Elem { key, data: backend_nftables::netlink::ElemData::Value(m.key[20..28].to_vec()), userdata: None };
    let mut b = Batch::new(render::nfproto(IpFamily::V4), 1);
    b.elements(TABLE, render::sets::AFFINITY, &[&e], false);
    kernel.apply(&Transaction::from_batch(b)).unwrap();
    e
}

/// A dual-stack sync commits one transaction per family, and only someone
/// else's commits may be repaired: taking any of ours for a stranger's
/// rewrote the table, which wiped what the packet path had remembered
/// (session affinity). Nothing is repaired or reported, and the remembered
/// client stays.
#[testkit::needs_root]
#[test]
fn own_dual_stack_commits_are_not_repaired() {
    let rt = rt();
    let ns = Netns::new("own");
    let (mut services, mut slices) = catalog();
    let (s6, sl6) = catalog_v6();
    services.extend(s6);
    slices.extend(sl6);
    let mut t = tracker(planner(FamilySet::DUAL, masquerade()), services, slices);
    let kernel = Arc::new(SystemKernel::new(ns.ns()));
    let dp = NftablesDataplane::new(settings(&ns, FamilySet::DUAL), kernel.clone());
    rt.block_on(dp.sync(request(t.snapshot(), &[], true))).unwrap();
    // Before the monitor starts: this commit is someone else's, and not seen.
    let remembered = remember_a_client(&ns);
    dp.watch();
    for round in 0..3u8 {
        // The dual-stack Service changes in both families: one transaction each.
        for (name, local, remote, kind) in [
            ("dual-4", "10.180.0.60".to_string(), format!("10.180.1.{}", 70 + round), "IPv4"),
            ("dual-6", "fd00:10::60".to_string(), format!("fd00:10:0:1::{}", 70 + round), "IPv6"),
        ] {
            common::apply_slice(
                &mut t,
                proxy_core::testing::SliceBuilder::new("v6", name, "dual")
                    .port("http", 8080, "TCP")
                    .address_type(kind)
                    .endpoint(proxy_core::testing::endpoint(&local).node(common::NODE))
                    .endpoint(proxy_core::testing::endpoint(&remote).node("node-2")),
            );
        }
        let out = rt.block_on(dp.sync(request(t.snapshot(), &["v6/dual"], false))).unwrap();
        assert!(out.repairs.is_empty(), "round {round}: {:?}", out.repairs);
    }
    let last = kernel.generation().unwrap();
    testkit::eventually_blocking("the monitor handled every commit", || {
        dp.monitor_generation().is_some_and(|g| g >= last)
    });
    let out = rt.block_on(dp.sync(request(t.snapshot(), &[], false))).unwrap();
    assert!(out.repairs.is_empty(), "our own commits were taken for someone else's: {:?}", out.repairs);
    let affinity = kernel.elements(IpFamily::V4, render::sets::AFFINITY).unwrap();
    assert!(affinity.iter().any(|e| e.key == remembered.key), "the remembered client was wiped: {affinity:?}");
    assert_eq!(inspect_matches(&rt, &dp, &t.snapshot()), Ok(()));
}

/// Without the monitor, a full request takes the kernel as witness: what
/// someone else changed is found, rewritten and reported.
#[testkit::needs_root]
#[test]
fn full_request_repairs_and_reports_drift() {
    let rt = rt();
    let ns = Netns::new("witness");
    let (services, slices) = catalog();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let snapshot = t.snapshot();
    let dp = NftablesDataplane::new(settings(&ns, FamilySet::V4), Arc::new(SystemKernel::new(ns.ns())));
    rt.block_on(dp.sync(request(snapshot.clone(), &[], true))).unwrap();
    let quiet = rt.block_on(dp.sync(request(snapshot.clone(), &[], true))).unwrap();
    assert!(quiet.repairs.is_empty(), "no drift, nothing repaired: {:?}", quiet.repairs);
    delete_one_element(&ns, render::sets::FRONTENDS);
    assert!(inspect_matches(&rt, &dp, &snapshot).is_err(), "the element is gone");
    let out = rt.block_on(dp.sync(request(snapshot.clone(), &[], true))).unwrap();
    assert_eq!(out.repairs.get("element"), Some(&1), "{:?}", out.repairs);
    assert_eq!(inspect_matches(&rt, &dp, &snapshot), Ok(()));
    ns.nft("flush chain ip switchyard svc-pod");
    let out = rt.block_on(dp.sync(request(snapshot.clone(), &[], true))).unwrap();
    assert!(out.repairs.contains_key("rule"), "{:?}", out.repairs);
    let dump = SystemKernel::new(ns.ns()).table(IpFamily::V4).unwrap();
    assert!(dump.chains.iter().any(|(c, n)| c == "svc-pod" && *n > 0), "rules restored: {dump:?}");
}

/// Cleanup removes our tables (both families) and nothing else, also from
/// a fresh process (a new dataplane value), and succeeds when there is nothing.
#[testkit::needs_root]
#[test]
fn cleanup_removes_only_ours() {
    let rt = rt();
    let ns = Netns::new("cleanup");
    let other = |ns: &Netns| -> bool {
        ns.ns()
            .run(|| {
                let mut c = backend_nftables::netlink::Conn::open().unwrap();
                c.request(&backend_nftables::netlink::nft::get_table_request(2, "other", 99)).is_ok()
            })
            .unwrap()
    };
    ns.nft("add table ip other");
    assert!(other(&ns));
    let (services, slices) = catalog();
    let mut t = tracker(planner(FamilySet::DUAL, masquerade()), services, slices);
    let dp = NftablesDataplane::new(settings(&ns, FamilySet::DUAL), Arc::new(SystemKernel::new(ns.ns())));
    rt.block_on(dp.sync(request(t.snapshot(), &[], true))).unwrap();
    let ours = |f| SystemKernel::new(ns.ns()).table(f).unwrap().exists;
    assert!(ours(IpFamily::V4) && ours(IpFamily::V6));
    let fresh = NftablesDataplane::new(settings(&ns, FamilySet::DUAL), Arc::new(SystemKernel::new(ns.ns())));
    rt.block_on(fresh.cleanup()).unwrap();
    assert!(!ours(IpFamily::V4) && !ours(IpFamily::V6), "our tables are gone");
    assert!(other(&ns), "someone else's table stays");
    rt.block_on(fresh.cleanup()).unwrap();
    assert!(rt.block_on(fresh.inspect()).unwrap().frontends.is_empty());
}

/// Real packets: a ClusterIP reaches its pod through the rules, from a
/// client outside the node (masqueraded) and from the node itself.
#[testkit::needs_root]
#[test]
fn traffic_flows_through_the_table() {
    let rt = rt();
    let lab = Lab::new();
    lab.echo("pod1", &[8080], &[]);
    let svc = proxy_core::testing::ServiceBuilder::new("ns", "web", "172.30.0.10").port("http", 80, "TCP");
    let slice = proxy_core::testing::SliceBuilder::new("ns", "web-1", "web")
        .port("http", 8080, "TCP")
        .endpoint(proxy_core::testing::endpoint("10.180.0.10").node(common::NODE));
    let mut t = tracker(planner(FamilySet::V4, masquerade()), vec![svc], vec![slice]);
    let mut s = Settings::new(lab.ns("node"));
    s.node_ips = vec![common::NODE_IP.parse().unwrap()];
    let dp = NftablesDataplane::new(s, Arc::new(SystemKernel::new(lab.ns("node"))));
    rt.block_on(dp.sync(request(t.snapshot(), &[], true))).unwrap();
    let to = "172.30.0.10:80".parse().unwrap();
    let got = lab.tcp("client", to).unwrap();
    assert_eq!(got.trim(), "pod1 10.180.0.1", "outside traffic to a ClusterIP is masqueraded");
    let got = lab.tcp("node", to).unwrap();
    assert!(got.starts_with("pod1 "), "{got}");
    let refused = lab.tcp("client", "172.30.0.10:81".parse().unwrap());
    assert!(refused.is_err(), "an unknown port of a ClusterIP is dropped: {refused:?}");
}

/// Operators run `nft list ruleset` on nodes all the time, and the CLI
/// reads every table to build its cache: a rule it cannot delinearize makes
/// it abort for the whole ruleset (nft 1.0.6, Debian bookworm, asserts in
/// `netlink_parse_concat_expr` on a lookup whose key is another lookup's
/// result). Every kind of rule we install, for the whole catalog (ClusterIP,
/// NodePort, load balancers with source ranges, affinity, local policies,
/// no endpoints), in both families, must list.
#[testkit::needs_root]
#[test]
fn nft_cli_lists_the_ruleset() {
    let rt = rt();
    let ns = Netns::new("list");
    let (mut services, mut slices) = catalog();
    let (s6, sl6) = catalog_v6();
    services.extend(s6);
    slices.extend(sl6);
    let mut t = tracker(planner(FamilySet::DUAL, masquerade()), services, slices);
    let dp = NftablesDataplane::new(settings(&ns, FamilySet::DUAL), Arc::new(SystemKernel::new(ns.ns())));
    rt.block_on(dp.sync(request(t.snapshot(), &[], true))).unwrap();
    let out = Command::new("ip").args(["netns", "exec", ns.0.name(), "nft", "list", "ruleset"]).output().expect("nft");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nft list ruleset: {:?}\n{stderr}\n{stdout}", out.status);
    assert!(stderr.trim().is_empty(), "nft list ruleset complained:\n{stderr}");
    for table in ["table ip switchyard", "table ip6 switchyard"] {
        assert!(stdout.contains(table), "{table} listed:\n{stdout}");
    }
    assert!(stdout.contains("update @affinity"), "the affinity rules listed:\n{stdout}");
    for chain in ["svc-external", "chk-pod", "nat-postrouting"] {
        assert!(stdout.contains(&format!("chain {chain} ")), "chain {chain} listed:\n{stdout}");
    }
}
