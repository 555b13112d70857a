//! Sync logic on the fake iptables: golden payloads, inspect round-trip,
//! partial syncs, the canary, convergence from leftovers, cleanup.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions panic on broken fixtures")]

mod common;

use std::sync::Arc;

use backend_iptables::fake::FakeIptables;
use backend_iptables::parse::Ruleset;
use backend_iptables::restore::Table;
use backend_iptables::{IptablesDataplane, names};
use common::*;
use proxy_core::testing::{ServiceBuilder, SliceBuilder, endpoint};
use proxy_core::{FamilySet, IpFamily};

fn small_catalog() -> (Vec<ServiceBuilder>, Vec<SliceBuilder>) {
    let services = vec![
        ServiceBuilder::new("ns1", "web", "172.30.0.41").port("http", 80, "TCP"),
        ServiceBuilder::new("ns1", "empty", "172.30.0.42").port("http", 80, "TCP"),
        ServiceBuilder::new("ns1", "lb", "172.30.0.44")
            .node_port("http", 80, "TCP", 3002)
            .load_balancer_ip("5.6.7.8", None)
            .external_traffic_policy("Local")
            .health_check_node_port(30000)
            .source_ranges(&["203.0.113.0/25"])
            .affinity(Some(60)),
    ];
    let slices = vec![
        SliceBuilder::new("ns1", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint(endpoint("10.180.0.1").node(NODE))
            .endpoint(endpoint("10.180.1.1").node("node-2")),
        SliceBuilder::new("ns1", "lb-1", "lb")
            .port("http", 8080, "TCP")
            .endpoint(endpoint("10.180.0.4").node(NODE))
            .endpoint(endpoint("10.180.1.4").node("node-2")),
    ];
    (services, slices)
}

fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(5)
            .map(|(i, (a, b))| format!("line {}:\n  want {a}\n  got  {b}", i + 1))
            .collect();
        panic!("{name} differs from the golden file (UPDATE_GOLDEN=1 to accept):\n{}", diff.join("\n"));
    }
}

/// The first full payload into empty tables, byte for byte.
#[test]
fn golden_full_payload() {
    let (services, slices) = small_catalog();
    let mut t = tracker(planner(FamilySet::DUAL, masquerade()), services, slices);
    let (dp, fake) = fake_dataplane(FamilySet::V4);
    dp.sync_blocking(&request(t.snapshot(), &[], true)).unwrap();
    let payloads = fake.payloads();
    assert_eq!(payloads.len(), 1);
    golden("full-v4.txt", &payloads[0].1);
}

/// A partial sync after one endpoint changed, byte for byte.
#[test]
fn golden_partial_payload() {
    let (services, slices) = small_catalog();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let (dp, fake) = fake_dataplane(FamilySet::V4);
    dp.sync_blocking(&request(t.snapshot(), &[], true)).unwrap();
    fake.clear_payloads();
    apply_slice(
        &mut t,
        SliceBuilder::new("ns1", "lb-1", "lb").port("http", 8080, "TCP").endpoint(endpoint("10.180.0.4").node(NODE)),
    );
    dp.sync_blocking(&request(t.snapshot(), &["ns1/lb"], false)).unwrap();
    let payloads = fake.payloads();
    assert_eq!(payloads.len(), 1);
    golden("partial-v4.txt", &payloads[0].1);
}

fn fresh(families: FamilySet, snapshot: Arc<proxy_core::Snapshot>) -> Arc<FakeIptables> {
    let (dp, fake) = fake_dataplane(families);
    dp.sync_blocking(&request(snapshot, &[], true)).unwrap();
    fake
}

#[test]
fn inspect_reads_back_the_expected_state() {
    for (families, (services, slices)) in [(FamilySet::V4, catalog()), (FamilySet::DUAL, catalog_v6())] {
        let mut t = tracker(planner(families, masquerade()), services, slices);
        let snapshot = t.snapshot();
        let (dp, _fake) = fake_dataplane(families);
        dp.sync_blocking(&request(snapshot.clone(), &[], true)).unwrap();
        let found = dp.inspect_blocking().unwrap();
        let diff = snapshot.expected_state().diff(&found);
        assert!(diff.is_empty(), "{}", diff.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"));
    }
}

#[test]
fn partial_sync_touches_only_what_changed() {
    let (services, slices) = catalog();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let fake = Arc::new(FakeIptables::new());
    let mut s = settings(FamilySet::V4);
    s.leaf_max = 4;
    let dp = IptablesDataplane::with_executor(s.clone(), fake.clone());
    let outcome = dp.sync_blocking(&request(t.snapshot(), &[], true)).unwrap();
    assert!(outcome.full);
    fake.clear_payloads();

    // One endpoint of a ClusterIP Service changes.
    apply_slice(
        &mut t,
        SliceBuilder::new("ns1", "basic-1", "basic")
            .port("http", 8080, "TCP")
            .endpoint(endpoint("10.180.1.99").node("node-2")),
    );
    let snapshot = t.snapshot();
    let outcome = dp.sync_blocking(&request(snapshot.clone(), &["ns1/basic"], false)).unwrap();
    assert!(!outcome.full);
    let payloads = fake.payloads();
    assert_eq!(payloads.len(), 1);
    let declared: Vec<&str> = payloads[0].1.lines().filter(|l| l.starts_with(':')).collect();
    // The leaves around the ClusterIP and the hairpin tree (10.180.0.1 was
    // local and is gone); with 4-rule leaves, a few merge or split.
    let total =
        fake.ruleset(IpFamily::V4).tables.values().flat_map(|t| t.chains.keys()).filter(|c| names::is_ours(c)).count();
    assert!(declared.len() <= 8 && total > 40, "{} of {total} chains rewritten: {declared:?}", declared.len());
    assert!(payloads[0].1.contains("-D SWITCHYARD-CANARY"), "partial syncs check the canary");

    // The result is what a full sync of the new state writes.
    let reference = Arc::new(FakeIptables::new());
    IptablesDataplane::with_executor(s.clone(), reference.clone())
        .sync_blocking(&request(snapshot.clone(), &[], true))
        .unwrap();
    assert_eq!(fake.ruleset(IpFamily::V4), reference.ruleset(IpFamily::V4));

    // A Service goes away: its chains go with it.
    t.apply(proxy_core::ProxyEvent::Service(proxy_core::ResourceEvent::Delete(
        ServiceBuilder::new("ns1", "lb-local", "172.30.0.44")
            .node_port("http", 80, "TCP", 3002)
            .load_balancer_ip("5.6.7.8", None)
            .external_traffic_policy("Local")
            .build(),
    )));
    let snapshot = t.snapshot();
    dp.sync_blocking(&request(snapshot.clone(), &["ns1/lb-local"], false)).unwrap();
    let reference = fresh_with(&s, snapshot.clone());
    assert_eq!(fake.ruleset(IpFamily::V4), reference.ruleset(IpFamily::V4));

    // Nothing changed: no restore at all.
    fake.clear_payloads();
    dp.sync_blocking(&request(snapshot, &[], false)).unwrap();
    assert!(fake.payloads().is_empty());
}

fn fresh_with(s: &backend_iptables::Settings, snapshot: Arc<proxy_core::Snapshot>) -> Arc<FakeIptables> {
    let fake = Arc::new(FakeIptables::new());
    IptablesDataplane::with_executor(s.clone(), fake.clone()).sync_blocking(&request(snapshot, &[], true)).unwrap();
    fake
}

#[test]
fn flushed_tables_are_repaired() {
    let (services, slices) = small_catalog();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let snapshot = t.snapshot();
    let (dp, fake) = fake_dataplane(FamilySet::V4);
    dp.sync_blocking(&request(snapshot.clone(), &[], true)).unwrap();
    let good = fake.ruleset(IpFamily::V4);

    // `iptables -t nat -F`, then a periodic sync: the canary notices.
    fake.flush_table(IpFamily::V4, Table::Nat);
    let outcome = dp.sync_blocking(&request(snapshot.clone(), &[], true)).unwrap();
    assert!(outcome.full, "the canary must force a full sync");
    assert_eq!(fake.ruleset(IpFamily::V4), good);

    // A flushed nat table is also found by a partial sync that changes it.
    fake.flush_table(IpFamily::V4, Table::Nat);
    let web = |ip: &str| {
        SliceBuilder::new("ns1", "web-1", "web").port("http", 8080, "TCP").endpoint(endpoint(ip).node("node-2"))
    };
    apply_slice(&mut t, web("10.180.1.2"));
    let snapshot = t.snapshot();
    let outcome = dp.sync_blocking(&request(snapshot.clone(), &["ns1/web"], false)).unwrap();
    assert!(outcome.full);
    assert_eq!(fake.ruleset(IpFamily::V4), fresh(FamilySet::V4, snapshot.clone()).ruleset(IpFamily::V4));

    // A partial sync leaves tables it does not change alone (each table is a
    // kernel commit); the filter table's canary is checked by the next periodic sync.
    fake.flush_table(IpFamily::V4, Table::Filter);
    apply_slice(&mut t, web("10.180.1.3"));
    let snapshot = t.snapshot();
    assert!(!dp.sync_blocking(&request(snapshot.clone(), &["ns1/web"], false)).unwrap().full);
    assert!(dp.sync_blocking(&request(snapshot.clone(), &[], true)).unwrap().full);
    assert_eq!(fake.ruleset(IpFamily::V4), fresh(FamilySet::V4, snapshot).ruleset(IpFamily::V4));
}

#[test]
fn failures_fall_back_to_full_syncs() {
    let (services, slices) = small_catalog();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let fake = Arc::new(FakeIptables::new());
    let mut registry = prometheus_client::registry::Registry::default();
    let dp = IptablesDataplane::with_executor(settings(FamilySet::V4), fake.clone()).with_metrics(&mut registry);
    dp.sync_blocking(&request(t.snapshot(), &[], true)).unwrap();
    apply_slice(
        &mut t,
        SliceBuilder::new("ns1", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint(endpoint("10.180.1.2").node("node-2")),
    );
    let snapshot = t.snapshot();
    // The partial restore fails once: the same call retries as a full sync.
    fake.fail_next(1);
    assert!(dp.sync_blocking(&request(snapshot.clone(), &["ns1/web"], false)).unwrap().full);
    // Both fail: the error is returned and the next sync is full.
    apply_slice(
        &mut t,
        SliceBuilder::new("ns1", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint(endpoint("10.180.1.3").node("node-2")),
    );
    let snapshot = t.snapshot();
    fake.fail_next(2);
    assert!(dp.sync_blocking(&request(snapshot.clone(), &["ns1/web"], false)).is_err());
    assert!(dp.sync_blocking(&request(snapshot.clone(), &[], false)).unwrap().full);
    assert_eq!(fake.ruleset(IpFamily::V4), fresh(FamilySet::V4, snapshot).ruleset(IpFamily::V4));
    // kube-proxy's metric names.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total 2"), "{text}");
    assert!(text.contains("kubeproxy_sync_proxy_rules_iptables_restore_failures_total 1"), "{text}");
    assert!(text.contains("kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"}"), "{text}");
}

fn sorted_builtins(mut rs: Ruleset) -> Ruleset {
    for (table, t) in rs.tables.iter_mut() {
        for b in table.builtin_chains() {
            if let Some(c) = t.chains.get_mut(*b) {
                c.rules.sort();
            }
        }
    }
    rs
}

fn foreign() -> Ruleset {
    Ruleset::parse_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n-A DOCKER -i docker0 -j RETURN\nCOMMIT\n\
         *filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n\
         -A INPUT -j KUBE-FIREWALL\n-A KUBE-FIREWALL -m mark --mark 0x8000/0x8000 -j DROP\nCOMMIT\n",
    )
    .unwrap()
}

#[test]
fn converges_from_leftovers_and_leaves_others_alone() {
    let (services, slices) = small_catalog();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let snapshot = t.snapshot();
    let (dp, fake) = fake_dataplane(FamilySet::V4);
    // Leftovers: an old chain name with a jump to it, a duplicate hook, a
    // hook in an old form, one of our chains with wrong content, a foreign
    // chain jumping into ours.
    let mut rs = foreign();
    let leftovers = "*nat\n:SWITCHYARD-OLD-NAME - [0:0]\n:SWITCHYARD-SERVICES - [0:0]\n:KUBE-SERVICES - [0:0]\n\
        -A PREROUTING -j SWITCHYARD-OLD-NAME\n-A PREROUTING -m comment --comment \"switchyard service portals\" -j SWITCHYARD-SERVICES\n\
        -A PREROUTING -m comment --comment \"switchyard service portals\" -j SWITCHYARD-SERVICES\n-A OUTPUT -j SWITCHYARD-SERVICES\n\
        -A SWITCHYARD-OLD-NAME -j SWITCHYARD-SERVICES\n-A SWITCHYARD-SERVICES -j DNAT --to-destination 1.2.3.4:5\n\
        -A KUBE-SERVICES -j SWITCHYARD-OLD-NAME\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n";
    let left = Ruleset::parse_save(leftovers).unwrap();
    for (table, tr) in left.tables {
        for (name, chain) in tr.chains {
            let entry = rs.tables.get_mut(&table).unwrap().chains.entry(name).or_default();
            entry.rules.extend(chain.rules);
        }
    }
    fake.set_ruleset(IpFamily::V4, rs);
    dp.sync_blocking(&request(snapshot.clone(), &[], true)).unwrap();

    // Ours are exactly what a sync into clean tables writes ...
    let got = fake.ruleset(IpFamily::V4);
    let clean_fake = Arc::new(FakeIptables::new());
    clean_fake.set_ruleset(IpFamily::V4, foreign());
    IptablesDataplane::with_executor(settings(FamilySet::V4), clean_fake.clone())
        .sync_blocking(&request(snapshot, &[], true))
        .unwrap();
    let mut want = clean_fake.ruleset(IpFamily::V4);
    // ... and the foreign chains stay, minus their jump into ours.
    want.tables.get_mut(&Table::Nat).unwrap().chains.insert(
        "KUBE-SERVICES".into(),
        backend_iptables::parse::Chain { policy: None, rules: vec!["-j RETURN".into()] },
    );
    // (Hooks that were already in place keep their position.)
    assert_eq!(
        sorted_builtins(got.clone()),
        sorted_builtins(want.clone()),
        "\n{}\n---\n{}",
        got.render_save(),
        want.render_save()
    );
    assert_eq!(got.table(Table::Filter).unwrap().chain("FORWARD").unwrap().policy.as_deref(), Some("DROP"));
}

#[test]
fn cleanup_removes_everything_we_own() {
    let (services, slices) = catalog();
    let mut t = tracker(planner(FamilySet::DUAL, masquerade()), services, slices);
    let (dp, fake) = fake_dataplane(FamilySet::DUAL);
    fake.set_ruleset(IpFamily::V4, foreign());
    dp.sync_blocking(&request(t.snapshot(), &[], true)).unwrap();
    assert!(fake.ruleset(IpFamily::V4).render_save().contains(names::PREFIX));
    // A fresh process (new dataplane, same kernel) cleans up.
    let other = IptablesDataplane::with_executor(settings(FamilySet::DUAL), fake.clone());
    other.cleanup_blocking().unwrap();
    assert_eq!(fake.ruleset(IpFamily::V4), foreign());
    assert!(!fake.ruleset(IpFamily::V6).render_save().contains(names::PREFIX));
    // Nothing left: cleanup is a no-op.
    fake.clear_payloads();
    other.cleanup_blocking().unwrap();
    assert!(fake.payloads().is_empty());
}

fn repairs(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// Finding 8 of issue 18, on the fake: every full request (each sync
/// period) compares the kernel with what this process wrote and repairs
/// what someone else changed, by kind; the canary alone saw only flushes.
#[test]
fn full_requests_repair_drift_the_canary_misses() {
    for fake in [FakeIptables::new(), FakeIptables::legacy()] {
        let fake = Arc::new(fake);
        let (services, slices) = small_catalog();
        let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
        let snapshot = t.snapshot();
        let dp = IptablesDataplane::with_executor(settings(FamilySet::V4), fake.clone());
        dp.sync_blocking(&request(snapshot.clone(), &[], true)).unwrap();
        let good = fake.ruleset(IpFamily::V4);
        let periodic = || dp.sync_blocking(&request(snapshot.clone(), &[], true)).unwrap();
        let tamper = |payload: &str| fake.apply(IpFamily::V4, payload).unwrap();
        let nat = |chain: &str| good.table(Table::Nat).unwrap().rules(chain).to_vec();
        let svc = good.table(Table::Nat).unwrap().chains.keys().find(|c| c.starts_with("SWITCHYARD-SVC-")).unwrap();
        let hook = backend_iptables::render::hooks().into_iter().find(|h| h.chain == "PREROUTING").unwrap();

        // Nothing changed: nothing repaired, nothing written.
        fake.clear_payloads();
        assert!(periodic().repairs.is_empty());
        assert!(fake.payloads().is_empty(), "{:?}", fake.payloads());

        let jumps: Vec<String> = good
            .table(Table::Nat)
            .unwrap()
            .chains
            .iter()
            .flat_map(|(c, ch)| {
                ch.rules.iter().filter(|r| r.ends_with(&format!("-j {svc}"))).map(move |r| format!("-D {c} {r}\n"))
            })
            .collect();
        let cases: Vec<(String, Vec<(&str, u64)>)> = vec![
            (format!("*nat\n-D PREROUTING {}\nCOMMIT\n", hook.rule), vec![("hook jump", 1)]),
            (format!("*nat\n-F {svc}\nCOMMIT\n"), vec![("rule", nat(svc).len() as u64)]),
            (
                format!("*nat\n{}-F {svc}\n-X {svc}\nCOMMIT\n", jumps.concat()),
                vec![("chain", 1), ("rule", jumps.len() as u64)],
            ),
            (
                {
                    let r = nat(svc).into_iter().find(|r| r.contains("--to-destination 10.180.1.4:8080")).unwrap();
                    format!("*nat\n-D {svc} {r}\n-I {svc} 1 {}\nCOMMIT\n", r.replace("10.180.1.4", "10.180.1.99"))
                },
                vec![("rule", 1)],
            ),
            (
                "*nat\n:SOMEONE - [0:0]\n:SWITCHYARD-NOT-OURS - [0:0]\n-A SOMEONE -j SWITCHYARD-SERVICES\nCOMMIT\n"
                    .into(),
                vec![("stray jump", 1), ("stray chain", 1)],
            ),
        ];
        for (payload, want) in cases {
            tamper(&payload);
            assert_ne!(fake.ruleset(IpFamily::V4), good);
            let out = periodic();
            assert!(out.full);
            assert_eq!(out.repairs, repairs(&want), "after {payload}");
            let mut got = fake.ruleset(IpFamily::V4);
            // The foreign chain stays (minus its jump into ours).
            got.tables.get_mut(&Table::Nat).unwrap().chains.remove("SOMEONE");
            assert_eq!(got, good, "after {payload}");
        }

        // A partial sync after the repairs writes what a fresh full sync writes.
        apply_slice(
            &mut t,
            SliceBuilder::new("ns1", "web-1", "web")
                .port("http", 8080, "TCP")
                .endpoint(endpoint("10.180.1.2").node("node-2")),
        );
        let snapshot = t.snapshot();
        let out = dp.sync_blocking(&request(snapshot.clone(), &["ns1/web"], false)).unwrap();
        assert!(!out.full && out.repairs.is_empty());
        let mut got = fake.ruleset(IpFamily::V4);
        got.tables.get_mut(&Table::Nat).unwrap().chains.remove("SOMEONE");
        assert_eq!(got, fresh(FamilySet::V4, snapshot).ruleset(IpFamily::V4));
    }
}

/// With nf_tables' generation as the cheap witness, a periodic sync reads the
/// tables only when someone committed since our last commit; without one
/// (legacy) it reads them every time.
#[test]
fn the_generation_spares_the_read_until_someone_commits() {
    let (services, slices) = small_catalog();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let snapshot = t.snapshot();
    for (fake, reads_every_time) in [(FakeIptables::new(), false), (FakeIptables::legacy(), true)] {
        let fake = Arc::new(fake);
        let dp = IptablesDataplane::with_executor(settings(FamilySet::V4), fake.clone());
        dp.sync_blocking(&request(snapshot.clone(), &[], true)).unwrap();
        let periodic = || {
            let before = fake.saves();
            let out = dp.sync_blocking(&request(snapshot.clone(), &[], true)).unwrap();
            (out, fake.saves() - before)
        };
        let (out, reads) = periodic();
        assert!(out.repairs.is_empty());
        assert_eq!(reads, if reads_every_time { 2 } else { 0 }, "nat and filter, or nothing");
        // Our own partial syncs keep the generation trusted.
        apply_slice(
            &mut t,
            SliceBuilder::new("ns1", "web-1", "web")
                .port("http", 8080, "TCP")
                .endpoint(endpoint("10.180.1.2").node("node-2")),
        );
        dp.sync_blocking(&request(t.snapshot(), &["ns1/web"], false)).unwrap();
        dp.sync_blocking(&request(snapshot.clone(), &["ns1/web"], false)).unwrap();
        let (_, reads) = periodic();
        assert_eq!(reads, if reads_every_time { 2 } else { 0 });
        // Anyone's commit, even one far from our chains, makes the next one read.
        fake.apply(IpFamily::V4, "*filter\n:SOMEONE - [0:0]\nCOMMIT\n").unwrap();
        let (out, reads) = periodic();
        assert!(out.repairs.is_empty());
        assert_eq!(reads, 2);
        let (_, reads) = periodic();
        assert_eq!(reads, if reads_every_time { 2 } else { 0 });
        // A tampered chain is found as soon as it happens.
        fake.flush_table(IpFamily::V4, Table::Filter);
        let (out, reads) = periodic();
        assert_eq!(reads, 2);
        assert!(out.repairs.contains_key("hook jump") && out.repairs.contains_key("rule"), "{:?}", out.repairs);
    }
}

/// Partial syncs keep the trees between syncs (`backend_iptables::trees`):
/// an endpoint replaced by another rewrites only the leaf that holds it,
/// and any sequence of changes (replaced endpoints, endpoint counts
/// changing, Services coming and going, endpoints turning local) leaves
/// the kernel exactly as a full sync of the same state does.
#[test]
fn kept_trees_follow_every_change_as_a_full_sync_would() {
    let service = |i: usize| {
        ServiceBuilder::new("ns1", &format!("s{i:02}"), &format!("172.30.1.{}", i + 1)).port("http", 80, "TCP")
    };
    let slice = |i: usize, version: usize, count: usize, local: bool| {
        let mut s = SliceBuilder::new("ns1", &format!("s{i:02}-1"), &format!("s{i:02}")).port("http", 8080, "TCP");
        for k in 0..count {
            let node = if local && k == 0 { NODE } else { "node-2" };
            s = s.endpoint(endpoint(&format!("10.180.{}.{}", 1 + version % 200, i * 3 + k + 1)).node(node));
        }
        s
    };
    let services: Vec<_> = (0..24).map(service).collect();
    let slices: Vec<_> = (0..24).map(|i| slice(i, 0, 2, false)).collect();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let fake = Arc::new(FakeIptables::new());
    let mut s = settings(FamilySet::V4);
    s.leaf_max = 6;
    let dp = IptablesDataplane::with_executor(s.clone(), fake.clone());
    dp.sync_blocking(&request(t.snapshot(), &[], true)).unwrap();
    let ours = |f: &FakeIptables| {
        f.ruleset(IpFamily::V4).tables.values().flat_map(|t| t.chains.keys()).filter(|c| names::is_ours(c)).count()
    };
    assert!(ours(&fake) > 8, "the trees have several leaves");

    let steps: Vec<(usize, &str)> = vec![
        (5, "replace"),
        (17, "replace"),
        (5, "replace"),
        (9, "grow"),
        (9, "replace"),
        (3, "delete"),
        (3, "add"),
        (12, "local"),
        (12, "replace"),
        (20, "replace"),
    ];
    let mut counts = [2usize; 24];
    for (step, (i, what)) in steps.into_iter().enumerate() {
        let name = format!("ns1/s{i:02}");
        let version = step + 1;
        match what {
            "replace" => apply_slice(&mut t, slice(i, version, counts[i], false)),
            "grow" => {
                counts[i] += 1;
                apply_slice(&mut t, slice(i, version, counts[i], false))
            }
            "local" => apply_slice(&mut t, slice(i, version, counts[i], true)),
            "delete" => {
                t.apply(proxy_core::ProxyEvent::Service(proxy_core::ResourceEvent::Delete(service(i).build())));
            }
            _ => apply_service(&mut t, service(i)),
        }
        fake.clear_payloads();
        let snapshot = t.snapshot();
        let outcome = dp.sync_blocking(&request(snapshot.clone(), &[&name], false)).unwrap();
        assert!(!outcome.full, "step {step} ({what} {name})");
        if what == "replace" && i != 12 {
            // Endpoints of one ClusterIP replaced, as many as before: its
            // DNAT rules live in one leaf. (s12's local endpoint also has a
            // hairpin entry, which moves with it.)
            let payloads = fake.payloads();
            let declared: Vec<&str> = payloads[0].1.lines().filter(|l| l.starts_with(':')).collect();
            assert_eq!(declared.len(), 1, "step {step}: only the leaf is rewritten: {declared:?}");
        }
        let reference = fresh_with(&s, snapshot);
        assert_eq!(
            fake.ruleset(IpFamily::V4),
            reference.ruleset(IpFamily::V4),
            "step {step} ({what} {name}): partial and full syncs disagree"
        );
    }
}
