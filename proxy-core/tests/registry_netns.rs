//! The backend registry and running work inside a network namespace.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::sync::Arc;

use async_trait::async_trait;
use proxy_core::testing::RecordingDataplane;
use proxy_core::*;

#[derive(Debug)]
struct Factory {
    mode: &'static str,
    available: bool,
}

#[async_trait]
impl BackendFactory for Factory {
    fn mode(&self) -> &str {
        self.mode
    }
    fn description(&self) -> &str {
        "test backend"
    }
    async fn probe(&self, _ctx: &BackendContext) -> Result<(), DataplaneError> {
        if self.available { Ok(()) } else { Err(DataplaneError::unavailable(self.mode, "no such kernel feature")) }
    }
    async fn build(&self, ctx: &BackendContext) -> Result<Arc<dyn Dataplane>, DataplaneError> {
        self.probe(ctx).await?;
        Ok(Arc::new(RecordingDataplane::new()))
    }
}

#[test]
fn registry_rejects_duplicates_and_names_known_modes() {
    let mut r = Registry::new();
    r.register(Arc::new(Factory { mode: "b", available: true })).unwrap();
    r.register(Arc::new(Factory { mode: "a", available: true })).unwrap();
    assert_eq!(
        r.register(Arc::new(Factory { mode: "a", available: true })).unwrap_err(),
        RegistryError::Duplicate("a".into())
    );
    assert_eq!(r.modes(), vec!["a", "b"]);
    let err = r.get("c").err().unwrap();
    assert_eq!(err.to_string(), "unknown proxy mode \"c\"; known modes: a, b");
    assert_eq!(r.get("b").unwrap().mode(), "b");
}

#[tokio::test]
async fn default_cleanup_treats_an_unavailable_mode_as_nothing_to_clean() {
    let ctx = BackendContext::new("node-1", NetNamespace::current());
    let missing = Factory { mode: "x", available: false };
    assert!(missing.probe(&ctx).await.is_err());
    missing.cleanup(&ctx).await.unwrap();
    Factory { mode: "y", available: true }.cleanup(&ctx).await.unwrap();
}

#[test]
fn node_port_address_selection() {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let primary = [ip("192.168.0.1")];
    assert!(NodePortAddresses::All.selects(ip("10.9.9.9"), &primary));
    assert!(NodePortAddresses::Primary.selects(ip("192.168.0.1"), &primary));
    assert!(!NodePortAddresses::Primary.selects(ip("192.168.0.2"), &primary));
    let cidrs = NodePortAddresses::Cidrs(vec!["192.168.0.0/24".parse().unwrap()]);
    assert!(cidrs.selects(ip("192.168.0.77"), &primary));
    assert!(!cidrs.selects(ip("192.168.1.1"), &primary));
}

fn links_seen_by(ns: &NetNamespace) -> String {
    let out = ns.command("ip").unwrap().args(["-o", "link", "show"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[testkit::needs_root]
#[tokio::test]
async fn work_runs_inside_the_namespace_and_nowhere_else() {
    let guard = testkit::Netns::for_test("core");
    let ns = NetNamespace::named(guard.name());
    // A fresh namespace has only loopback, whatever the host has.
    let inside = links_seen_by(&ns);
    assert_eq!(inside.lines().count(), 1, "{inside}");
    assert!(inside.contains("lo:"));
    // In-process work on a thread inside it sees the same, and the calling
    // thread stays where it was.
    let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let seen = ns.run_async(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap()).await.unwrap();
    let target = std::fs::metadata(guard.path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(seen.to_string_lossy(), format!("net:[{}]", target.ino()));
    assert_eq!(std::fs::read_link("/proc/thread-self/ns/net").unwrap(), own);
    assert!(NetNamespace::named("swy-core-does-not-exist").command("true").is_err());
}
