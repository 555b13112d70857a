//! kube-proxy's conntrack sysctls, set by switchyard in a network namespace
//! made for the test (`swy-dmn-<pid>-<n>`), never the root namespace: the
//! per-namespace timeouts and `tcp_be_liberal` are written there, the
//! host-wide `nf_conntrack_max` and `hashsize` are left alone outside the
//! host's namespace, and the root namespace's values do not move.
//! Needs root; ignored without it (see `testkit::needs_root`).
#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::path::Path;

use common::*;

const NETFILTER: &str = "/proc/sys/net/netfilter";

const NAMES: &[&str] = &[
    "nf_conntrack_max",
    "nf_conntrack_tcp_timeout_established",
    "nf_conntrack_tcp_timeout_close_wait",
    "nf_conntrack_udp_timeout",
    "nf_conntrack_udp_timeout_stream",
    "nf_conntrack_tcp_be_liberal",
];

/// The values in the root namespace (read, never written).
fn root_values() -> Vec<(String, String)> {
    NAMES
        .iter()
        .map(|n| (n.to_string(), std::fs::read_to_string(Path::new(NETFILTER).join(n)).unwrap_or_default()))
        .collect()
}

fn ns_value(ns: &NetnsHandle, name: &str) -> u64 {
    let (ok, out) = ns.exec(&["cat", &format!("{NETFILTER}/{name}")]);
    assert!(ok, "reading {name} in {}", ns.name);
    out.trim().parse().unwrap()
}

#[testkit::needs_root]
#[test]
fn init_only_sets_kube_proxys_conntrack_sysctls_in_its_namespace() {
    let root_before = root_values();
    let ns = NetnsHandle::create();
    let max_before = ns_value(&ns, "nf_conntrack_max");
    let bin = switchyard_bin();
    let (code, _, err) = run(
        Path::new("ip"),
        &[
            "netns",
            "exec",
            &ns.name,
            bin.to_str().unwrap(),
            "--init-only",
            "--conntrack-max-per-core=65536",
            "--conntrack-tcp-timeout-established=2h",
            "--conntrack-tcp-timeout-close-wait=30m",
            "--conntrack-udp-timeout=45s",
            "--conntrack-udp-timeout-stream=2m30s",
            "--conntrack-tcp-be-liberal",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(ns_value(&ns, "nf_conntrack_tcp_timeout_established"), 7200);
    assert_eq!(ns_value(&ns, "nf_conntrack_tcp_timeout_close_wait"), 1800);
    assert_eq!(ns_value(&ns, "nf_conntrack_udp_timeout"), 45);
    assert_eq!(ns_value(&ns, "nf_conntrack_udp_timeout_stream"), 150);
    assert_eq!(ns_value(&ns, "nf_conntrack_tcp_be_liberal"), 1);
    // Host-wide: not this namespace's to change (kube-proxy would fail here).
    assert_eq!(ns_value(&ns, "nf_conntrack_max"), max_before);
    assert!(err.contains("not setting nf_conntrack_max"), "the skip is said: {err}");
    assert_eq!(root_values(), root_before, "the root namespace's values moved");
}

#[testkit::needs_root]
#[test]
fn zero_leaves_every_value_as_the_kernel_has_it() {
    let ns = NetnsHandle::create();
    let before: Vec<u64> = NAMES.iter().map(|n| ns_value(&ns, n)).collect();
    let bin = switchyard_bin();
    let mut args = vec!["netns", "exec", &ns.name, bin.to_str().unwrap(), "--init-only"];
    args.extend(NO_CONNTRACK_SYSCTLS);
    let (code, _, err) = run(Path::new("ip"), &args, &[]);
    assert_eq!(code, Some(0), "{err}");
    let after: Vec<u64> = NAMES.iter().map(|n| ns_value(&ns, n)).collect();
    assert_eq!(after, before);
}

/// The daemon applies them at start, before serving (as kube-proxy does).
#[testkit::needs_root]
#[tokio::test]
async fn the_daemon_applies_them_at_start() {
    let root_before = root_values();
    let ns = NetnsHandle::create();
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.yaml");
    std::fs::write(&m, format!("{WEB}---{NODE_A}")).unwrap();
    let d = Daemon::start_in_netns(
        &ns.name,
        &memory_bin(),
        dir.path(),
        &[
            "--proxy-mode=memory",
            &format!("--source=file:{}", m.display()),
            "--hostname-override=node-a",
            "--conntrack-udp-timeout=77s",
        ],
    );
    eventually("nf_conntrack_udp_timeout is 77 in the namespace", || {
        let v = ns_value(&ns, "nf_conntrack_udp_timeout");
        async move { v == 77 }
    })
    .await;
    // kube-proxy's defaults came with it: 24h established, 1h close-wait.
    assert_eq!(ns_value(&ns, "nf_conntrack_tcp_timeout_established"), 86400, "{}", d.log_text());
    assert_eq!(ns_value(&ns, "nf_conntrack_tcp_timeout_close_wait"), 3600);
    assert_eq!(root_values(), root_before, "the root namespace's values moved");
    drop(d);
}
