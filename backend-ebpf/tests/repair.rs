//! The datapath under tampering and churn (issue 18, findings 5, 6, 7 and
//! the eBPF leaks of 9): detached and unpinned hooks are seen and repaired,
//! and reported; new pod interfaces are served without a sync; what the
//! configuration leaves unserved is said; runs leave no bpffs behind.
//! Real packets in namespaces of the test's own (see `common`).

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::*;
use proxy_core::{BackendContext, Capability, Dataplane, DataplaneHealth, StateDifference};

/// Not a test of its own: the host-network client `host_probe` re-executes
/// this binary to run (a no-op in an ordinary run).
#[test]
fn host_client() {
    host_client_main();
}

fn p2_ip() -> IpAddr {
    "10.244.2.5".parse().expect("ip")
}

fn repairs(out: &proxy_core::SyncOutcome, kind: &str) -> u64 {
    out.repairs.get(kind).copied().unwrap_or(0)
}

/// Finding 5: a detached datapath is seen and repaired while the backend
/// runs, without a restart, and every repair is reported by a sync; while
/// re-attaching is impossible the backend is Down and inspect says where.
#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_datapath_is_repaired_and_reported() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED detached_datapath_is_repaired_and_reported: {reason}");
        return;
    }
    let mut lab = Lab::new();
    lab.serve("p1");
    lab.serve("p2");
    let dp = dataplane(&lab);
    let snap = world();
    dp.sync(request(snap.clone(), true)).await.expect("first sync");
    let p2 = lab.netns("p2");
    let reached = Seen::Reply("p1".into(), p2_ip());
    assert_eq!(tcp_probe(&p2, "10.96.0.10:80"), reached, "pod -> ClusterIP");

    // Someone detaches and unpins our TC programs on p2's interface: the
    // background check re-attaches them (no sync needed), and the next sync
    // reports what was repaired.
    detach_tc_from_outside(&lab, "vp2", &["tc-", "tce-"]);
    eventually("p2 reaches the ClusterIP again", || {
        let seen = tcp_probe(&p2, "10.96.0.10:80");
        (seen == reached, seen)
    })
    .await;
    let out = dp.sync(request(snap.clone(), true)).await.expect("full sync");
    assert!(repairs(&out, "tc attachment") >= 1, "repairs reported: {:?}", out.repairs);
    assert_eq!(dp.health(), DataplaneHealth::Up);

    // Pins removed while the links stay attached (our descriptors hold
    // them): nothing breaks, and the pins come back.
    let svc_pin = lab.pin.join("maps/swy_svc");
    std::fs::remove_file(&svc_pin).expect("unpin swy_svc");
    let out = dp.sync(request(snap.clone(), true)).await.expect("full sync");
    assert!(svc_pin.exists(), "swy_svc pinned again");
    assert!(repairs(&out, "pin") >= 1, "repairs reported: {:?}", out.repairs);
    assert_eq!(tcp_probe(&p2, "10.96.0.10:80"), reached, "routing never depended on the pin");

    // The socket hooks: detached from outside, re-attached.
    outside::detach_pinned_link(&lab.pin.join("links/cg-swy_connect4")).expect("detach connect4");
    let node_ip: IpAddr = NODE_IP.parse().expect("ip");
    eventually("a host-network client reaches the ClusterIP again", || {
        let seen = host_probe(&lab, "10.96.0.10:80");
        (seen == Seen::Reply("p1".into(), node_ip), seen)
    })
    .await;
    let out = dp.sync(request(snap.clone(), true)).await.expect("full sync");
    assert!(repairs(&out, "cgroup attachment") >= 1, "repairs reported: {:?}", out.repairs);

    if !backend_ebpf::client::use_tcx() {
        eprintln!(
            "SKIPPED part of detached_datapath_is_repaired_and_reported: Down while re-attaching fails needs TCX (kernel >= 6.6) to make attaching impossible"
        );
        return;
    }
    // Re-attaching made impossible: another agent fills vp2's TCX ingress
    // (the kernel takes at most 63 programs per hook) once ours is gone.
    // The backend is Down, says where, and inspect shows the hook.
    let node = lab.netns("node");
    let ifindex = node.run(|| nix::net::if_::if_nametoindex("vp2").expect("vp2")).expect("enter node namespace");
    let others: Vec<std::os::fd::OwnedFd> = node
        .run(move || {
            let mut others = Vec::new();
            while let Ok(fd) = outside::attach_other_tcx(ifindex) {
                others.push(fd);
                assert!(others.len() < 200, "the kernel should refuse at some point");
            }
            others
        })
        .expect("enter node namespace");
    let pin = lab.pin.join("links/tc-vp2");
    let mut others = others;
    // Ours leaves, another takes its place; should the background check
    // re-attach ours in between, take it away again.
    loop {
        let _ = outside::detach_pinned_link(&pin);
        match node.run(move || outside::attach_other_tcx(ifindex)).expect("enter node namespace") {
            Ok(fd) => {
                others.push(fd);
                break;
            }
            Err(e) => assert!(others.len() < 200, "cannot fill vp2's ingress: {e}"),
        }
    }
    let out = dp.sync(request(snap.clone(), true)).await;
    assert!(out.is_ok(), "a hook that cannot be attached does not fail the sync: {out:?}");
    match dp.health() {
        DataplaneHealth::Down { reason } => assert!(reason.contains("tc ingress on vp2"), "{reason}"),
        up => panic!("health while vp2 cannot be attached: {up:?}"),
    }
    let diff = snap.expected_state().diff(&dp.inspect().await.expect("inspect"));
    assert!(
        diff.contains(&StateDifference::Unattached { hook: "tc ingress on vp2".into() }),
        "inspect while vp2 is detached: {diff:?}"
    );
    let seen = tcp_probe(&p2, "10.96.0.10:80");
    assert_ne!(seen, reached, "nothing translates on vp2");

    // The other agent leaves: the background check attaches ours, Up again.
    drop(others);
    eventually("Up again", || {
        let h = dp.health();
        (h == DataplaneHealth::Up, h)
    })
    .await;
    eventually("p2 reaches the ClusterIP after the repair", || {
        let seen = tcp_probe(&p2, "10.96.0.10:80");
        (seen == reached, seen)
    })
    .await;
    let diff = snap.expected_state().diff(&dp.inspect().await.expect("inspect"));
    assert!(diff.is_empty(), "{diff:?}");
}

/// Finding 5, as `switchyard inspect` (a fresh process) sees it: the maps
/// are intact, the hooks are not, and that is a difference.
#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reports_a_detached_datapath() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED inspect_reports_a_detached_datapath: {reason}");
        return;
    }
    let mut lab = Lab::new();
    lab.serve("p1");
    let snap = world();
    let dp = dataplane(&lab);
    dp.sync(request(snap.clone(), true)).await.expect("first sync");
    let diff = snap.expected_state().diff(&dp.inspect().await.expect("inspect"));
    assert!(diff.is_empty(), "{diff:?}");
    // The daemon is gone (its pins keep routing); someone detaches vp2.
    drop(dp);
    detach_tc_from_outside(&lab, "vp2", &["tc-", "tce-"]);
    let fresh = dataplane(&lab);
    let found = fresh.inspect().await.expect("inspect");
    let diff = snap.expected_state().diff(&found);
    assert!(diff.iter().all(|d| matches!(d, StateDifference::Unattached { .. })), "the maps are intact: {diff:?}");
    let hooks: BTreeSet<_> = diff
        .iter()
        .filter_map(|d| match d {
            StateDifference::Unattached { hook } => Some(hook.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(hooks, BTreeSet::from(["tc egress on vp2", "tc ingress on vp2"]), "{diff:?}");
    // Its first sync attaches again, and the kernel matches.
    fresh.sync(request(snap.clone(), true)).await.expect("sync");
    let diff = snap.expected_state().diff(&fresh.inspect().await.expect("inspect"));
    assert!(diff.is_empty(), "{diff:?}");
}

/// Finding 6: a pod created after the last sync reaches Services without
/// another sync (link events attach the programs at once).
#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_interfaces_are_attached_without_a_sync() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED new_interfaces_are_attached_without_a_sync: {reason}");
        return;
    }
    let mut lab = Lab::new();
    lab.serve("p1");
    let dp = dataplane(&lab);
    dp.sync(request(world(), true)).await.expect("first sync");
    lab.add_pod("p3", 3);
    let p3 = lab.netns("p3");
    let p3_ip: IpAddr = "10.244.3.5".parse().expect("ip");
    eventually("the new pod reaches the ClusterIP without a sync", || {
        let seen = tcp_probe(&p3, "10.96.0.10:80");
        (seen == Seen::Reply("p1".into(), p3_ip), seen)
    })
    .await;
    // And its interface is gone as soon as it is: its pins too.
    sh(&["ip", "-n", &lab.ns("node"), "link", "del", "vp3"]);
    let pins = lab.pin.join("links");
    eventually("vp3's pins are removed", || {
        let left: Vec<String> = std::fs::read_dir(&pins)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        (!left.iter().any(|p| p.ends_with("-vp3")), left)
    })
    .await;
    drop(dp);
}

/// A `tracing` writer that keeps what was logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Finding 7: without `cgroupPath` node-originated traffic is not routed;
/// the backend says so once, at start, and does not claim the capability.
#[tokio::test]
async fn without_cgroup_path_the_limitation_is_said() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt().with_writer(logs.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let factory = backend_ebpf::factory();
    let mut ctx = BackendContext::new("node-a", proxy_core::NetNamespace::current());
    ctx.section = serde_json::Value::Null;
    let dp = factory.build(&ctx).await.expect("build");
    let text = String::from_utf8_lossy(&logs.0.lock().expect("lock")).into_owned();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN") && l.contains("cgroupPath")).collect();
    assert_eq!(warnings.len(), 1, "one warning at start: {text}");
    assert!(warnings[0].contains("cannot reach ClusterIPs"), "{}", warnings[0]);
    assert!(warnings[0].contains("node ports on the node's own addresses"), "{}", warnings[0]);
    assert!(!dp.capabilities().has(Capability::HostNetworkClients));
    assert_eq!(dp.limitations().len(), 1);

    // With a cgroup: no warning, the capability, no limitation.
    logs.0.lock().expect("lock").clear();
    ctx.section = serde_json::json!({"cgroupPath": "/sys/fs/cgroup"});
    let dp = factory.build(&ctx).await.expect("build");
    let text = String::from_utf8_lossy(&logs.0.lock().expect("lock")).into_owned();
    assert!(!text.contains("cgroupPath"), "{text}");
    assert!(dp.capabilities().has(Capability::HostNetworkClients));
    assert!(dp.limitations().is_empty());
}

/// The bpffs mounts of ours, from /proc/self/mountinfo (`findmnt -t bpf`).
fn our_bpffs_mounts(prefix: &str) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .filter(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("bpf ")))
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|p| {
            p.parent() == Some(Path::new(backend_ebpf::config::PRIVATE_BPFFS_DIR))
                && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect()
}

/// A dataplane pinning to a private bpffs under /run/switchyard/bpffs,
/// as `EbpfConfig::for_netns` sets up where /sys/fs/bpf is no bpffs.
fn private_dataplane(lab: &Lab) -> backend_ebpf::EbpfDataplane {
    let mut ctx = BackendContext::new("node-a", lab.netns("node"));
    ctx.node_ips = vec![NODE_IP.parse().expect("ip")];
    let mount = Path::new(backend_ebpf::config::PRIVATE_BPFFS_DIR).join(lab.ns("node"));
    let cfg = backend_ebpf::EbpfConfig {
        pin_path: mount.join("switchyard"),
        private_bpffs: Some(mount),
        ..backend_ebpf::EbpfConfig::default()
    };
    backend_ebpf::EbpfDataplane::new(ctx, cfg)
}

/// Finding 9 (eBPF): runs that end without cleanup, in namespaces that are
/// then deleted, leave at most one bpffs mount of ours; pins of deleted
/// interfaces go; cleanup leaves nothing.
#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_leave_no_bpffs_behind() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED runs_leave_no_bpffs_behind: {reason}");
        return;
    }
    let prefix = format!("swy-bpf-{}-", std::process::id());
    let mine = |p: &PathBuf| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix));
    let before: Vec<PathBuf> = our_bpffs_mounts(&prefix);
    assert!(before.is_empty(), "left by an earlier test of this process: {before:?}");

    // Run 1: a lab, a daemon that stops without cleanup, the lab deleted.
    let first = {
        let lab = Lab::new();
        let dp = private_dataplane(&lab);
        dp.sync(request(world(), true)).await.expect("sync");
        drop(dp);
        lab.ns("node")
    };
    let after_first = our_bpffs_mounts(&prefix);
    assert!(after_first.iter().all(mine));

    // Run 2, in another lab: twice, with an interface deleted while it is down.
    let lab = Lab::new();
    let dp = private_dataplane(&lab);
    dp.sync(request(world(), true)).await.expect("sync");
    drop(dp);
    sh(&["ip", "-n", &lab.ns("node"), "link", "del", "vp2"]);
    let dp = private_dataplane(&lab);
    dp.sync(request(world(), true)).await.expect("sync");
    let mounts = our_bpffs_mounts(&prefix);
    assert!(
        mounts.len() <= 1 && !mounts.iter().any(|m| m.ends_with(&first)),
        "run 1's bpffs outlived its namespace: {mounts:?}"
    );
    let mount = Path::new(backend_ebpf::config::PRIVATE_BPFFS_DIR).join(lab.ns("node"));
    let links: Vec<String> = std::fs::read_dir(mount.join("switchyard/links"))
        .expect("links")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!links.iter().any(|l| l.ends_with("-vp2")), "pins of a deleted interface: {links:?}");

    dp.cleanup().await.expect("cleanup");
    let mounts = our_bpffs_mounts(&prefix);
    assert!(mounts.is_empty(), "after cleanup: {mounts:?}");
    assert!(!mount.exists(), "{} left", mount.display());
}
