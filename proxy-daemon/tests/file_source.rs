//! The file source feeding a tracker: the first load is complete or nothing,
//! then only differences; broken and empty files keep what they held,
//! deleted files delete, duplicates keep the first holder; inotify sees
//! changes (ConfigMap swaps included) and polling is the fallback.
#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::WEB;
use proxy_core::health::ProxyHealth;
use proxy_core::{ChangeTracker, PlannerConfig, ProxyEvent, ResourceEvent, TrackerConfig};
use proxy_daemon::source::EventSink;
use proxy_daemon::source::file::{FileSource, WatchMode};

/// A short description of an event: `Apply Service default/a`, `InitDone EndpointSlice`.
fn describe(ev: &ProxyEvent) -> String {
    fn name<K: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(
        kind: &str,
        ev: &ResourceEvent<K>,
    ) -> String {
        let obj = |verb: &str, o: &K| {
            let m = o.metadata();
            match &m.namespace {
                Some(ns) => format!("{verb} {kind} {ns}/{}", m.name.clone().unwrap_or_default()),
                None => format!("{verb} {kind} {}", m.name.clone().unwrap_or_default()),
            }
        };
        match ev {
            ResourceEvent::Init => format!("Init {kind}"),
            ResourceEvent::InitDone => format!("InitDone {kind}"),
            ResourceEvent::InitApply(o) => obj("InitApply", o),
            ResourceEvent::Apply(o) => obj("Apply", o),
            ResourceEvent::Delete(o) => obj("Delete", o),
        }
    }
    match ev {
        ProxyEvent::Service(e) => name("Service", e),
        ProxyEvent::EndpointSlice(e) => name("EndpointSlice", e),
        ProxyEvent::Node(e) => name("Node", e),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    tracker: Arc<Mutex<ChangeTracker>>,
    events: Arc<Mutex<Vec<String>>>,
    health: ProxyHealth,
    gauge: prometheus_client::metrics::gauge::Gauge,
    source: Arc<FileSource>,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with(|s| s)
    }

    /// The root of the source: the fixture's directory.
    fn with(configure: impl FnOnce(FileSource) -> FileSource) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Self::at(dir, None, configure)
    }

    fn at(dir: tempfile::TempDir, root: Option<&str>, configure: impl FnOnce(FileSource) -> FileSource) -> Fixture {
        let tracker = Arc::new(Mutex::new(ChangeTracker::new(TrackerConfig {
            wait_for_node: false,
            ..TrackerConfig::new(PlannerConfig::new("node-a"))
        })));
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink: EventSink = {
            let (t, log) = (tracker.clone(), events.clone());
            Arc::new(move |ev: ProxyEvent| {
                log.lock().unwrap().push(describe(&ev));
                t.lock().unwrap().apply(ev);
            })
        };
        let health = ProxyHealth::new(Duration::from_secs(60));
        let gauge = prometheus_client::metrics::gauge::Gauge::default();
        let path = root.map_or_else(|| dir.path().to_path_buf(), |r| dir.path().join(r));
        let source = FileSource::new(path, Duration::from_millis(50), sink)
            .with_error_gauge(gauge.clone())
            .with_status(health.clone());
        let source = Arc::new(configure(source));
        Fixture { dir, tracker, events, health, gauge, source }
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).unwrap();
    }

    fn services(&self) -> Vec<String> {
        let snap = self.tracker.lock().unwrap().snapshot();
        snap.services().map(|p| p.name().to_string()).collect()
    }

    fn synced(&self) -> bool {
        self.tracker.lock().unwrap().is_synced()
    }

    /// The events delivered since the last call.
    fn take_events(&self) -> Vec<String> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// Runs the source's loop until the returned guard is dropped.
    fn run(&self) -> Running {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.source.clone().run(rx, async move {
            let _ = stop_rx.await;
        }));
        Running { reload: tx, stop: Some(stop_tx), task: Some(task) }
    }
}

struct Running {
    reload: tokio::sync::mpsc::Sender<proxy_daemon::source::file::ReloadRequest>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

fn svc(name: &str, ip: &str) -> String {
    WEB.replace("web", name).replace("10.96.0.10", ip)
}

fn service_only(name: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n"
    )
}

#[test]
fn the_first_load_is_a_relist_then_only_differences() {
    let f = Fixture::new();
    f.write("a.yaml", &svc("a", "10.96.0.1"));
    f.write("b.yml", &svc("b", "10.96.0.2"));
    f.write(".hidden.yaml", &svc("hidden", "10.96.0.3"));
    f.write("notes.txt", "not a manifest");
    let r = f.source.load();
    assert!(r.changed && r.errors.is_empty(), "{r:?}");
    assert!(f.synced(), "the first load completes the initial lists");
    assert_eq!(f.services(), vec!["default/a", "default/b"]);
    let first = f.take_events();
    assert_eq!(first.first().map(String::as_str), Some("Init Service"));
    assert!(first.contains(&"InitDone Node".to_string()), "{first:?}");

    assert!(!f.source.load().changed, "unchanged files deliver nothing");
    assert!(f.take_events().is_empty());

    // One endpoint changes in one file: one Apply, nothing else.
    f.write("a.yaml", &svc("a", "10.96.0.1").replace("10.0.1.1", "10.0.1.9"));
    assert!(f.source.load().changed);
    assert_eq!(f.take_events(), vec!["Apply EndpointSlice default/a-1"]);

    // A file removed: its objects are deleted, explicitly.
    std::fs::remove_file(f.dir.path().join("b.yml")).unwrap();
    f.source.load();
    assert_eq!(f.take_events(), vec!["Delete Service default/b", "Delete EndpointSlice default/b-1"]);
    assert_eq!(f.services(), vec!["default/a"]);
}

#[test]
fn a_first_load_with_a_problem_delivers_nothing_until_it_is_fixed() {
    let f = Fixture::new();
    f.write("a.yaml", &svc("a", "10.96.0.1"));
    f.write("x.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: a}\nspec: {ports: [{port: eighty}]}\n");
    let r = f.source.load();
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(!r.changed && f.take_events().is_empty(), "nothing delivered");
    assert!(!f.synced(), "the tracker never becomes synced: nothing is programmed");
    let why = f.health.not_ready_reason().unwrap();
    let file = f.dir.path().join("x.yaml");
    assert!(why.contains(&format!("file: {}, document 2 (Service a/b): spec.ports[0].port", file.display())), "{why}");
    assert_eq!(f.gauge.get(), 1);

    // Retried on every change; still broken, still nothing.
    f.write("a.yaml", &svc("a", "10.96.0.7"));
    f.source.load();
    assert!(!f.synced());

    // Fixed: the whole current state is delivered as the initial list.
    f.write("x.yaml", &service_only("ok", "10.96.0.5"));
    let r = f.source.load();
    assert!(r.changed && r.errors.is_empty(), "{r:?}");
    assert!(f.synced());
    assert_eq!(f.services(), vec!["default/a", "default/ok"]);
    assert_eq!(f.gauge.get(), 0);
    assert!(f.health.source_problems().is_empty());
}

#[test]
fn an_empty_directory_or_a_missing_path_is_no_first_load() {
    let f = Fixture::new();
    f.source.load();
    assert!(!f.synced(), "no manifest at all is not an empty state");
    assert!(f.health.not_ready_reason().unwrap().contains("no manifest files"));
    f.write("empty.yaml", "apiVersion: v1\nkind: List\nitems: []\n");
    f.source.load();
    assert!(f.synced(), "an explicit empty List is");

    let f = Fixture::at(tempfile::tempdir().unwrap(), Some("missing"), |s| s);
    let r = f.source.load();
    assert!(!f.synced() && r.errors[0].to_string().contains("cannot read"), "{r:?}");
}

#[test]
fn a_file_with_thousands_of_documents_loads() {
    // serde-saphyr's default budget refused more than 1,024 documents, so a
    // 523-Service manifest (Service + slice each) loaded nothing.
    let f = Fixture::new();
    let text: String =
        (0..1_100).map(|i| service_only(&format!("s{i}"), &format!("10.96.{}.{}", i / 250, i % 250 + 1))).collect();
    f.write("all.yaml", &text);
    let r = f.source.load();
    assert!(r.errors.is_empty(), "{:?}", r.errors.first());
    assert_eq!(r.services, 1_100);
    assert!(f.synced());
    assert_eq!(f.services().len(), 1_100);
}

#[test]
fn an_emptied_file_keeps_its_objects_and_a_deleted_one_does_not() {
    let f = Fixture::new();
    f.write("a.yaml", &format!("{}{}", service_only("a1", "10.96.0.1"), service_only("a2", "10.96.0.2")));
    f.write("b.yaml", &service_only("b", "10.96.0.3"));
    f.source.load();
    assert_eq!(f.services(), vec!["default/a1", "default/a2", "default/b"]);
    f.take_events();

    // Truncated (a writer that truncates, then writes; `> a.yaml`): kept, and reported.
    for empty in ["", "\n# only a comment\n---\n"] {
        f.write("a.yaml", empty);
        let r = f.source.load();
        assert!(f.take_events().is_empty(), "nothing deleted");
        assert_eq!(f.services(), vec!["default/a1", "default/a2", "default/b"]);
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(r.errors[0].to_string().contains("a.yaml: the file is empty"), "{}", r.errors[0]);
        assert_eq!(f.gauge.get(), 1);
        assert!(f.health.source_problems()["file"].contains("a.yaml: the file is empty"));
    }

    // Written again: no longer an error.
    f.write("a.yaml", &service_only("a1", "10.96.0.1"));
    let r = f.source.load();
    assert!(r.errors.is_empty());
    assert_eq!(f.take_events(), vec!["Delete Service default/a2"]);
    assert_eq!(f.gauge.get(), 0);

    // Deleted: an explicit delete of what it held.
    std::fs::remove_file(f.dir.path().join("a.yaml")).unwrap();
    let r = f.source.load();
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(f.take_events(), vec!["Delete Service default/a1"]);
    assert_eq!(f.services(), vec!["default/b"]);

    // An explicit empty List deletes too.
    f.write("b.yaml", "apiVersion: v1\nkind: List\nitems: []\n");
    f.source.load();
    assert_eq!(f.take_events(), vec!["Delete Service default/b"]);
}

#[test]
fn the_same_service_in_two_files_is_an_error_and_the_first_keeps_it() {
    let f = Fixture::new();
    f.write("a.yaml", &service_only("web", "10.96.0.1"));
    f.write("b.yaml", &format!("{}{}", service_only("db", "10.96.0.2"), service_only("web", "10.96.0.9")));
    let r = f.source.load();
    assert_eq!(r.errors.len(), 1, "{r:?}");
    let e = r.errors[0].to_string();
    let (a, b) = (f.dir.path().join("a.yaml"), f.dir.path().join("b.yaml"));
    assert!(e.contains(&format!("{}, document 2 (Service default/web): duplicate", b.display())), "{e}");
    assert!(e.contains(&format!("also defined in {}, document 1, which keeps it", a.display())), "{e}");
    assert_eq!(f.gauge.get(), 1);
    assert!(!f.synced(), "a duplicate on a first load is a problem like any other");

    // Resolved by removing the second definition: a.yaml's is delivered.
    f.write("b.yaml", &service_only("db", "10.96.0.2"));
    f.source.load();
    assert!(f.synced());
    let snap = f.tracker.lock().unwrap().snapshot();
    let ips: Vec<String> = snap.services().map(|p| p.service.cluster_ips[0].to_string()).collect();
    assert_eq!(ips, vec!["10.96.0.2", "10.96.0.1"], "db, then web from a.yaml");
    f.take_events();

    // While running, a later file that defines web again does not take it.
    f.write("0.yaml", &service_only("web", "10.96.0.8"));
    let r = f.source.load();
    assert!(f.take_events().is_empty(), "a.yaml keeps web");
    assert_eq!(r.errors.len(), 1);
    assert!(r.errors[0].to_string().contains("which keeps it"));
    // a.yaml lets go: the other definition takes over, as an update, not a delete.
    std::fs::remove_file(&a).unwrap();
    f.source.load();
    assert_eq!(f.take_events(), vec!["Apply Service default/web"]);
    assert_eq!(f.gauge.get(), 0);
}

#[test]
fn malformed_files_keep_what_they_held() {
    let f = Fixture::new();
    f.write("a.yaml", &format!("{}---\n{}", svc("a1", "10.96.0.1"), svc("a2", "10.96.0.2")));
    f.source.load();
    assert_eq!(f.services(), vec!["default/a1", "default/a2"]);

    // a2 disappears from the file, a3 is added, and one document is broken.
    f.write(
        "a.yaml",
        &format!(
            "{}---\n{}---\nkind: Service\napiVersion: v1\nmetadata: {{name: x}}\nspec: 7\n",
            svc("a1", "10.96.0.1"),
            svc("a3", "10.96.0.3")
        ),
    );
    let r = f.source.load();
    assert_eq!(r.errors.len(), 1);
    assert!(r.errors[0].to_string().contains("a.yaml, document 5 (Service x): spec"), "{}", r.errors[0]);
    assert_eq!(f.services(), vec!["default/a1", "default/a2", "default/a3"], "nothing lost while malformed");

    // YAML that does not parse at all.
    f.write("a.yaml", "kind: [\n");
    let r = f.source.load();
    assert!(r.errors[0].to_string().contains("not valid YAML"));
    assert_eq!(f.source.load().errors, r.errors, "an unchanged malformed file is still reported");
    assert_eq!(f.services(), vec!["default/a1", "default/a2", "default/a3"]);

    // Fixed: the file's content is the truth again.
    f.write("a.yaml", &svc("a1", "10.96.0.1"));
    let r = f.source.load();
    assert!(r.errors.is_empty());
    assert_eq!(f.services(), vec!["default/a1"]);
}

#[test]
fn a_vanished_path_keeps_everything() {
    let f = Fixture::new();
    f.write("a.yaml", &svc("a", "10.96.0.1"));
    f.source.load();
    f.take_events();
    let path = f.dir.path().to_path_buf();
    let moved = path.with_extension("moved");
    std::fs::rename(&path, &moved).unwrap();
    let r = f.source.load();
    assert_eq!(r.errors.len(), 1);
    assert!(f.take_events().is_empty());
    assert_eq!(f.services(), vec!["default/a"]);
    assert_eq!(f.gauge.get(), 1);
    std::fs::rename(&moved, &path).unwrap();
    let r = f.source.load();
    assert!(r.errors.is_empty() && f.take_events().is_empty(), "back as it was: no change");
}

#[test]
fn another_nodes_deletion_is_not_ours() {
    let f = Fixture::with(|s| s.for_node("node-a"));
    let node = |n: &str| format!("---\napiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\n");
    f.write("a.yaml", &format!("{}{}{}", service_only("a", "10.96.0.1"), node("node-a"), node("node-b")));
    f.source.load();
    let first = f.take_events();
    assert!(first.contains(&"InitApply Node node-a".to_string()) && !first.iter().any(|e| e.contains("node-b")));
    f.write("a.yaml", &format!("{}{}", service_only("a", "10.96.0.1"), node("node-a")));
    f.source.load();
    assert!(f.take_events().is_empty(), "node-b's deletion is not delivered");
    assert!(f.tracker.lock().unwrap().node().is_some());
}

#[tokio::test]
async fn inotify_sees_changes_without_polling_and_reloads_are_answered() {
    // A poll interval of an hour: only inotify can see these changes in time.
    let f = Fixture::with(|s| s.with_poll_interval(Duration::from_secs(3600)));
    f.write("a.yaml", &svc("a", "10.96.0.1"));
    let running = f.run();
    common::eventually("the first sweep", || {
        let s = f.services();
        async move { s.len() == 1 }
    })
    .await;
    f.write("b.yaml", &svc("b", "10.96.0.2"));
    common::eventually("inotify picks up b.yaml", || {
        let s = f.services();
        async move { s.len() == 2 }
    })
    .await;
    std::fs::remove_file(f.dir.path().join("a.yaml")).unwrap();
    common::eventually("inotify picks up a.yaml's removal", || {
        let s = f.services();
        async move { s == vec!["default/b"] }
    })
    .await;

    // A reload request is answered after the events were delivered.
    f.write("c.yaml", &svc("c", "10.96.0.3"));
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    running.reload.send(reply_tx).await.unwrap();
    let report = reply_rx.await.unwrap();
    assert_eq!(report.services, 2);
    assert_eq!(f.services(), vec!["default/b", "default/c"]);
    running.stop().await;
}

#[tokio::test]
async fn a_configmap_data_swap_is_seen() {
    // The layout kubelet's atomic writer makes: x.yaml -> ..data/x.yaml, ..data -> ..v1.
    let f = Fixture::with(|s| s.with_poll_interval(Duration::from_secs(3600)));
    let d = f.dir.path();
    let version = |name: &str, text: &str| {
        std::fs::create_dir(d.join(name)).unwrap();
        std::fs::write(d.join(name).join("x.yaml"), text).unwrap();
    };
    version("..v1", &svc("a", "10.96.0.1"));
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/x.yaml", d.join("x.yaml")).unwrap();
    let running = f.run();
    common::eventually("the first sweep", || {
        let s = f.services();
        async move { s == vec!["default/a"] }
    })
    .await;

    version("..v2", &svc("b", "10.96.0.2"));
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..v1")).unwrap();
    common::eventually("the swap is seen", || {
        let s = f.services();
        async move { s == vec!["default/b"] }
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn polling_is_the_fallback() {
    let f = Fixture::with(|s| s.with_watch(WatchMode::Poll));
    f.write("a.yaml", &svc("a", "10.96.0.1"));
    let running = f.run();
    f.write("b.yaml", &svc("b", "10.96.0.2"));
    common::eventually("polling picks up b.yaml", || {
        let s = f.services();
        async move { s.len() == 2 }
    })
    .await;
    running.stop().await;
}

#[test]
fn a_rewrite_within_the_same_timestamp_is_not_missed() {
    // Same size, written right after the first read: the stamp may not move
    // (coarse timestamps), the content did.
    let f = Fixture::new();
    f.write("a.yaml", &service_only("a", "10.96.0.1"));
    f.source.load();
    f.write("a.yaml", &service_only("a", "10.96.0.2"));
    f.source.load();
    let snap = f.tracker.lock().unwrap().snapshot();
    assert_eq!(snap.services().next().unwrap().service.cluster_ips[0].to_string(), "10.96.0.2");
}

#[test]
fn a_path_that_is_one_file_works_and_its_deletion_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), service_only("a", "10.96.0.1")).unwrap();
    let f = Fixture::at(dir, Some("m.yaml"), |s| s);
    f.source.load();
    assert_eq!(f.services(), vec!["default/a"]);
    f.take_events();
    std::fs::remove_file(f.dir.path().join("m.yaml")).unwrap();
    let r = f.source.load();
    assert_eq!(r.errors.len(), 1, "the watched path itself vanished: an error");
    assert!(f.take_events().is_empty());
    assert_eq!(f.services(), vec!["default/a"]);
}

#[tokio::test]
async fn a_directory_made_again_is_watched_again() {
    let root = tempfile::tempdir().unwrap();
    // An hour between polls: the vanishing, the return and the change after
    // it are all seen through inotify (the parent is watched while the path
    // is gone, and the new directory once it is back).
    let f = Fixture::at(root, Some("m"), |s| s.with_poll_interval(Duration::from_secs(3600)));
    let dir = f.dir.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), svc("a", "10.96.0.1")).unwrap();
    let running = f.run();
    common::eventually("the first sweep", || {
        let s = f.services();
        async move { s == vec!["default/a"] }
    })
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    common::eventually("the vanished path is reported", || {
        let n = f.gauge.get();
        async move { n == 1 }
    })
    .await;
    assert_eq!(f.services(), vec!["default/a"], "kept");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), svc("a", "10.96.0.1")).unwrap();
    common::eventually("back", || {
        let n = f.gauge.get();
        async move { n == 0 }
    })
    .await;
    std::fs::write(dir.join("b.yaml"), svc("b", "10.96.0.2")).unwrap();
    common::eventually("b.yaml", || {
        let s = f.services();
        async move { s.len() == 2 }
    })
    .await;
    running.stop().await;
}
