//! Tests that need root: the daemon in a network namespace made for the
//! test (`swy-dmn-<pid>-<n>`), never the root namespace. Without root they are
//! ignored (see `testkit::needs_root`).
#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use common::*;

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `--netns`: healthCheckNodePort servers listen inside the programmed
/// namespace, not in the daemon's own.
#[testkit::needs_root]
#[tokio::test]
async fn health_check_servers_bind_in_the_programmed_namespace() {
    let ns = NetnsHandle::create();
    let dir = tempfile::tempdir().unwrap();
    let hc_port = free_port();
    let m = write(dir.path(), "m.yaml", &format!("{}---{NODE_A}", lb_service(hc_port)));
    let mut d = Daemon::start(
        &memory_bin(),
        dir.path(),
        &[
            "--proxy-mode=memory",
            &format!("--source=file:{}", m.display()),
            "--hostname-override=node-a",
            "--min-sync-period=50ms",
            &format!("--netns={}", ns.name),
        ],
    );
    d.wait_ready().await;
    let hc: std::net::SocketAddr = format!("127.0.0.1:{hc_port}").parse().unwrap();
    eventually("healthCheckNodePort answers inside the namespace", || {
        let ns = &ns;
        async move { matches!(ns.http("GET", hc, "/").await, Ok((200, _, b)) if b.contains("\"localEndpoints\":1")) }
    })
    .await;
    assert!(http_async("GET", hc, "/", "").await.is_err(), "nothing listens in the daemon's own namespace");
    assert_eq!(d.terminate().await, Some(0));
}

/// The real iptables backend, end to end, inside a namespace: programs,
/// inspects as desired, leaves rules in place on SIGTERM, cleans up.
#[testkit::needs_root]
#[tokio::test]
async fn iptables_mode_in_a_namespace() {
    if !proxy_daemon::default_registry().modes().iter().any(|m| m == "iptables") {
        eprintln!("SKIPPED iptables_mode_in_a_namespace: the iptables backend is not registered yet");
        return;
    }
    let ns = NetnsHandle::create();
    let dir = tempfile::tempdir().unwrap();
    let m = write(dir.path(), "m.yaml", &format!("{WEB}---{NODE_A}"));
    let src = format!("--source=file:{}", m.display());
    let common = ["--proxy-mode=iptables", "--hostname-override=node-a", "--cluster-cidr=10.244.0.0/16"];
    let mut args: Vec<&str> = common.to_vec();
    args.extend([src.as_str(), "--min-sync-period=50ms"]);
    // The whole process runs inside the namespace.
    let mut d = Daemon::start_in_netns(&ns.name, &switchyard_bin(), dir.path(), &args);
    eventually("ready", || {
        let (ns, addr) = (&ns, d.metrics);
        async move { matches!(ns.http("GET", addr, "/readyz").await, Ok((200, _, _))) }
    })
    .await;
    let (ok, rules) = ns.exec(&["iptables-save"]);
    assert!(ok && rules.contains("SWITCHYARD"), "rules programmed in the namespace:\n{rules}");
    // Removing the other modes' leftovers builds them; their limitations
    // (eBPF without a cgroup) are not this node's and are not logged.
    let log = d.log_text();
    assert!(!log.contains("cgroupPath"), "an iptables node warned about the eBPF mode's configuration:\n{log}");

    let mut inspect: Vec<&str> = vec!["netns", "exec", &ns.name];
    let bin = switchyard_bin();
    let bin = bin.to_str().unwrap();
    inspect.extend([bin, "inspect"]);
    inspect.extend(common);
    inspect.push(src.as_str());
    let (code, out, err) = run(std::path::Path::new("ip"), &inspect, &[]);
    assert_eq!(code, Some(0), "inspect: kernel as desired\n{out}\n{err}");
    assert!(out.contains("10.96.0.10:80/tcp"), "{out}");

    assert_eq!(d.terminate().await, Some(0), "{}", d.log_text());
    let (_, rules) = ns.exec(&["iptables-save"]);
    assert!(rules.contains("SWITCHYARD"), "rules stay in place after SIGTERM");

    let (code, _, err) = run(std::path::Path::new("ip"), &["netns", "exec", &ns.name, bin, "--cleanup"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let (_, rules) = ns.exec(&["iptables-save"]);
    assert!(!rules.contains("SWITCHYARD"), "--cleanup removed everything:\n{rules}");
}

/// Issue 18, finding 8, through the binary: someone deletes our jump from nat
/// PREROUTING (the canary survives); within a sync period the rule is back
/// and `switchyard_drift_repairs_total` counts the repair. Finding 9:
/// `route_localnet`, set for localhost node ports, is back to what it was
/// (0 in a new namespace) after `--cleanup`.
#[testkit::needs_root]
#[tokio::test]
async fn iptables_mode_repairs_tampering_within_the_sync_period() {
    let ns = NetnsHandle::create();
    let route_localnet = || ns.exec(&["cat", "/proc/sys/net/ipv4/conf/all/route_localnet"]).1.trim().to_string();
    assert_eq!(route_localnet(), "0");
    let dir = tempfile::tempdir().unwrap();
    let m = write(dir.path(), "m.yaml", &format!("{WEB}---{NODE_A}"));
    let src = format!("--source=file:{}", m.display());
    let args = [
        "--proxy-mode=iptables",
        "--hostname-override=node-a",
        "--cluster-cidr=10.244.0.0/16",
        src.as_str(),
        "--min-sync-period=50ms",
        "--sync-period=2s",
    ];
    let mut d = Daemon::start_in_netns(&ns.name, &switchyard_bin(), dir.path(), &args);
    eventually("ready", || {
        let (ns, addr) = (&ns, d.metrics);
        async move { matches!(ns.http("GET", addr, "/readyz").await, Ok((200, _, _))) }
    })
    .await;
    let hook = "-A PREROUTING -m comment --comment \"switchyard service portals\" -j SWITCHYARD-SERVICES";
    let (_, rules) = ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(rules.contains(hook), "{rules}");
    assert_eq!(route_localnet(), "1", "localhost node ports need route_localnet");

    let (ok, _) = ns.exec(&[
        "iptables",
        "-t",
        "nat",
        "-D",
        "PREROUTING",
        "-m",
        "comment",
        "--comment",
        "switchyard service portals",
        "-j",
        "SWITCHYARD-SERVICES",
    ]);
    assert!(ok);
    assert!(!ns.exec(&["iptables-save", "-t", "nat"]).1.contains(hook));
    let counted = "switchyard_drift_repairs_total{backend=\"iptables\",kind=\"hook jump\"} 1";
    eventually("the deleted PREROUTING jump is back and counted", || {
        let (ns, addr) = (&ns, d.metrics);
        async move {
            let (_, rules) = ns.exec(&["iptables-save", "-t", "nat"]);
            let metrics = match ns.http("GET", addr, "/metrics").await {
                Ok((200, _, body)) => body,
                _ => return false,
            };
            rules.contains(hook) && metrics.contains(counted)
        }
    })
    .await;

    assert_eq!(d.terminate().await, Some(0), "{}", d.log_text());
    assert!(d.log_text().contains("hook"), "the repair is logged, naming the hook:\n{}", d.log_text());
    let bin = switchyard_bin();
    let (code, _, err) =
        run(std::path::Path::new("ip"), &["netns", "exec", &ns.name, bin.to_str().unwrap(), "--cleanup"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!ns.exec(&["iptables-save"]).1.contains("SWITCHYARD"));
    assert_eq!(route_localnet(), "0", "--cleanup restores route_localnet");
}

/// Issue 18, finding 1: a restart on a malformed manifest used to sync 0
/// Services (wiping every rule) and report ready. Now the daemon delivers
/// nothing until the manifests are whole: the kernel keeps what it holds,
/// `/readyz` names the problem, and the fix is programmed.
#[testkit::needs_root]
#[tokio::test]
async fn a_restart_on_a_malformed_manifest_keeps_the_rules() {
    let ns = NetnsHandle::create();
    let dir = tempfile::tempdir().unwrap();
    let good = format!("{WEB}---{NODE_A}");
    let m = write(dir.path(), "m.yaml", &good);
    let src = format!("--source=file:{}", m.display());
    // A sync attempt every 200 ms, each logged at -v 4 while the initial
    // lists are incomplete: the test watches attempts go by, no sleeping.
    let args = [
        "--proxy-mode=iptables",
        "--hostname-override=node-a",
        "--cluster-cidr=10.244.0.0/16",
        src.as_str(),
        "--min-sync-period=50ms",
        "--sync-period=200ms",
        "-v",
        "4",
    ];
    let programmed = |rules: &str| rules.contains("10.96.0.10/32");
    let ready = |d: &Daemon| {
        let (ns, addr) = (&ns, d.metrics);
        async move { matches!(ns.http("GET", addr, "/readyz").await, Ok((200, _, _))) }
    };

    let mut d = Daemon::start_in_netns(&ns.name, &switchyard_bin(), dir.path(), &args);
    eventually("ready", || ready(&d)).await;
    let (_, rules) = ns.exec(&["iptables-save"]);
    assert!(programmed(&rules), "the Service is programmed:\n{rules}");
    assert_eq!(d.terminate().await, Some(0), "{}", d.log_text());

    // Corrupted while the daemon was down: a broken second document.
    write(dir.path(), "m.yaml", &format!("{WEB}---\nkind: [\n---{NODE_A}"));
    let d = Daemon::start_in_netns(&ns.name, &switchyard_bin(), dir.path(), &args);
    eventually("five sync attempts held back", || {
        let log = d.log_text();
        async move { log.matches("initial lists incomplete; not syncing yet").count() >= 5 }
    })
    .await;
    let (_, rules) = ns.exec(&["iptables-save"]);
    assert!(programmed(&rules), "the rules stay in place:\n{rules}\nlog:\n{}", d.log_text());
    let (code, _, body) = ns.http("GET", d.metrics, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(&format!("file: {}, document 3: not valid YAML", m.display())), "{body}");
    let (_, _, metrics) = ns.http("GET", d.metrics, "/metrics").await.unwrap();
    assert!(metrics.contains("switchyard_ready 0"), "{metrics}");
    assert!(metrics.contains("switchyard_manifest_errors 1"), "{metrics}");
    assert!(d.log_text().contains("nothing is programmed until they are fixed"), "{}", d.log_text());

    // Fixed: ready, and programmed.
    write(dir.path(), "m.yaml", &good);
    eventually("ready after the fix", || ready(&d)).await;
    let (_, rules) = ns.exec(&["iptables-save"]);
    assert!(programmed(&rules), "{rules}");
    let (_, _, metrics) = ns.http("GET", d.metrics, "/metrics").await.unwrap();
    assert!(metrics.contains("switchyard_manifest_errors 0"), "{metrics}");
    let mut d = d;
    assert_eq!(d.terminate().await, Some(0), "{}", d.log_text());
    let bin = switchyard_bin();
    let (code, _, err) =
        run(std::path::Path::new("ip"), &["netns", "exec", &ns.name, bin.to_str().unwrap(), "--cleanup"], &[]);
    assert_eq!(code, Some(0), "{err}");
}
